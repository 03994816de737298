//! Servers in the field that ask for more than RFC 7643's examples, keep
//! userNames unique only case-sensitively, or write a rate limit's reset to
//! the minute; each played by the proxy over the real scim2-server, against a
//! generic target (`target.kind: scim`):
//!
//! - [`RequiresNameFormatted`]: a user create without `name.formatted` is
//!   refused (400 `invalidValue`); `/Schemas` marks `name` and
//!   `name.formatted` required.
//! - [`RequiresMemberRef`]: group members without `$ref` are refused in a
//!   create and in a PATCH; `/Schemas` marks `members.$ref` required.
//! - [`CaseSensitiveUniqueness`]: a userName differing only in case from an
//!   existing one is accepted as a new user, and `userName eq` compares
//!   case-sensitively, while `/Schemas` says `uniqueness: server`,
//!   `caseExact: false`.
//! - [`RequiresNickName`]: `/Schemas` marks `nickName` required (nothing
//!   idsync can derive) and a create without one is refused.
//! - [`Fault::MinuteWindow`]: 429s whose `X-RateLimit-Reset` is the next
//!   minute, written to the minute.
//!
//! Each test states what idsync must do there: fill `name.formatted`, send
//! `$ref`, adopt the account made in another case, wait for the minute.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::faults::{Rig, assert_exact, assert_no_duplicates, rig};
use crate::harness::{
    Output, ScimServer, USER_SCHEMA, UserRow, assert_target_matches, operations, str_at,
};
use crate::proxy::{
    Answer, Exchange, Fault, FaultProxy, Quirk, Schedule, Upstream, next_minute, pass_through,
    wait_early_in_a_minute,
};
use crate::quirks_schema::{GROUP_SCHEMA, attribute, rewrite_schema};

// ---------------------------------------------------------------------------
// The quirks

/// A user create must carry `name.formatted`.
pub struct RequiresNameFormatted;

impl Quirk for RequiresNameFormatted {
    fn request(&self, req: &mut Exchange, _: &Upstream) -> Option<Answer> {
        if req.method != "POST" || req.resource() != "Users" {
            return None;
        }
        let body = req.json()?;
        let formatted = body["name"]["formatted"]
            .as_str()
            .is_some_and(|f| !f.trim().is_empty());
        (!formatted)
            .then(|| Answer::error_typed(400, "invalidValue", "Field 'formatted' is required"))
    }

    fn response(&self, req: &Exchange, answer: &mut Answer, _: &Upstream) {
        rewrite_schema(req, answer, USER_SCHEMA, |attrs| {
            let name = attribute(attrs, "name");
            name["required"] = json!(true);
            for sub in name["subAttributes"].as_array_mut().into_iter().flatten() {
                if sub["name"] == "formatted" {
                    sub["required"] = json!(true);
                }
            }
        });
    }
}

/// A user create must carry `nickName`, which RFC 7643 derives from nothing.
pub struct RequiresNickName;

impl Quirk for RequiresNickName {
    fn request(&self, req: &mut Exchange, _: &Upstream) -> Option<Answer> {
        if req.method != "POST" || req.resource() != "Users" {
            return None;
        }
        let body = req.json()?;
        let nick = body["nickName"].as_str().is_some_and(|n| !n.is_empty());
        (!nick).then(|| Answer::error_typed(400, "invalidValue", "Field 'nickName' is required"))
    }

    fn response(&self, req: &Exchange, answer: &mut Answer, _: &Upstream) {
        rewrite_schema(req, answer, USER_SCHEMA, |attrs| {
            attrs.push(json!({"name": "nickName", "type": "string", "required": true}));
        });
    }
}

/// Group members must carry `$ref`, in a create and in a PATCH that adds or
/// replaces members.
pub struct RequiresMemberRef;

/// The members a group write sets.
fn members_sent(req: &Exchange) -> Vec<Value> {
    let Some(body) = req.json() else {
        return Vec::new();
    };
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    match req.method.as_str() {
        "POST" | "PUT" => list(&body["members"]),
        "PATCH" => body["Operations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|op| !str_at(op, "op").eq_ignore_ascii_case("remove"))
            .flat_map(|op| match op.get("path").and_then(Value::as_str) {
                Some(path) if path.eq_ignore_ascii_case("members") => list(&op["value"]),
                Some(_) => Vec::new(),
                None => list(&op["value"]["members"]),
            })
            .collect(),
        _ => Vec::new(),
    }
}

impl Quirk for RequiresMemberRef {
    fn request(&self, req: &mut Exchange, _: &Upstream) -> Option<Answer> {
        if req.resource() != "Groups" {
            return None;
        }
        let lacking = members_sent(req)
            .iter()
            .any(|m| m["$ref"].as_str().is_none_or(|r| r.trim().is_empty()));
        lacking.then(|| {
            Answer::error_typed(400, "invalidValue", "Attribute 'members.$ref' is required")
        })
    }

    fn response(&self, req: &Exchange, answer: &mut Answer, _: &Upstream) {
        rewrite_schema(req, answer, GROUP_SCHEMA, |attrs| {
            let members = attribute(attrs, "members");
            for sub in members["subAttributes"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                if sub["name"] == "$ref" {
                    sub["required"] = json!(true);
                }
            }
        });
    }
}

/// The marker a case variant's stored userName carries on the real server.
const CASE_MARK: &str = "#case-";

/// A userName that differs only in case from an existing one is a new user;
/// `userName eq` is compared exactly. The real server refuses case variants,
/// so the quirk stores one under a marked userName and shows it unmarked.
#[derive(Default)]
pub struct CaseSensitiveUniqueness {
    made: Mutex<u32>,
}

fn unmarked(name: &str) -> &str {
    name.split(CASE_MARK).next().unwrap_or(name)
}

/// A query parameter of a request path, decoded.
fn query_param(path: &str, name: &str) -> Option<String> {
    let url = reqwest::Url::parse(&format!("http://x{path}")).ok()?;
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `filter=<attr op "value">`, percent-encoded.
fn filter_query(attr: &str, op: &str, value: &str) -> String {
    let filter = format!("{attr} {op} {}", json!(value));
    let url = reqwest::Url::parse_with_params("http://x/", &[("filter", filter)]).expect("url");
    url.query().unwrap_or_default().to_owned()
}

/// The string of `userName <op> "value"`.
fn compared(filter: &str, op: &str) -> Option<String> {
    let rest = filter.trim().strip_prefix(&format!("userName {op} "))?;
    serde_json::from_str::<String>(rest.trim()).ok()
}

impl Quirk for CaseSensitiveUniqueness {
    fn request(&self, req: &mut Exchange, up: &Upstream) -> Option<Answer> {
        if req.resource() != "Users" {
            return None;
        }
        let base = req.path.split('?').next().unwrap_or("").to_owned();
        if req.method == "POST" {
            let mut body = req.json()?;
            let name = str_at(&body, "userName").to_owned();
            // The real server's `eq` ignores case: it finds every variant.
            let found = up.call(
                "GET",
                &format!("{base}?{}", filter_query("userName", "eq", &name)),
                "",
            );
            let variants: Vec<String> = found
                .json()
                .and_then(|l| l["Resources"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .map(|u| unmarked(str_at(u, "userName")).to_owned())
                .collect();
            if !variants.is_empty() && !variants.contains(&name) {
                let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
                *made += 1;
                body["userName"] = json!(format!("{name}{CASE_MARK}{made}"));
                req.body = body.to_string();
            }
        }
        if req.method == "GET"
            && let Some(wanted) = query_param(&req.path, "filter").and_then(|f| compared(&f, "eq"))
        {
            // Marked variants must be found too: ask with `sw`, compare below.
            req.path = format!("{base}?{}", filter_query("userName", "sw", &wanted));
        }
        None
    }

    fn response(&self, req: &Exchange, answer: &mut Answer, _: &Upstream) {
        rewrite_schema(req, answer, USER_SCHEMA, |attrs| {
            let user_name = attribute(attrs, "userName");
            user_name["uniqueness"] = json!("server");
            user_name["caseExact"] = json!(false);
        });
        if req.resource() != "Users" {
            return;
        }
        let Some(mut body) = answer.json() else {
            return;
        };
        let show = |u: &mut Value| {
            let name = unmarked(str_at(u, "userName")).to_owned();
            u["userName"] = json!(name);
        };
        let wanted = query_param(&req.path, "filter").and_then(|f| compared(&f, "sw"));
        if let Some(list) = body.get_mut("Resources").and_then(Value::as_array_mut) {
            list.iter_mut().for_each(show);
            if let Some(wanted) = wanted {
                list.retain(|u| str_at(u, "userName") == wanted);
                let n = list.len();
                body["totalResults"] = json!(n);
                body["itemsPerPage"] = json!(n);
            }
        } else if body.get("userName").is_some() {
            show(&mut body);
        }
        answer.body = body.to_string();
    }
}

// ---------------------------------------------------------------------------
// Helpers

fn quirk_rig(tag: &str, n_users: usize, quirk: Arc<dyn Quirk>) -> Rig {
    let rig = rig(tag, n_users, 3, pass_through());
    rig.proxy.set_quirks(vec![quirk]);
    rig
}

/// `sync --format json`: exit 0, nothing failed.
fn sync_ok(rig: &Rig, step: &str) -> Output {
    let out = rig.ws.run(&["sync", "--format", "json"]);
    assert_eq!(
        out.code,
        0,
        "{step}\n{}\n{}",
        out.dump(),
        rig.proxy.summary()
    );
    assert_eq!(out.json()["failed"], 0, "{step}\n{}", out.dump());
    out
}

/// `plan` and `plan --full` are empty.
fn assert_plans_empty(rig: &Rig, step: &str) {
    for args in [
        &["plan", "--format", "json"][..],
        &["plan", "--full", "--format", "json"][..],
    ] {
        let plan = rig.ws.run(args).assert_code(0).json();
        assert!(
            operations(&plan).is_empty(),
            "after {step}: `idsync {}` is not empty:\n{plan:#}",
            args.join(" ")
        );
    }
}

/// The bodies of requests of `kind` (`POST /Users`, …) and their statuses.
fn sent(proxy: &FaultProxy, kind: &str) -> Vec<(Value, Option<u16>)> {
    proxy
        .entries()
        .into_iter()
        .filter(|e| e.kind == kind)
        .map(|e| {
            (
                serde_json::from_str(&e.body).unwrap_or(Value::Null),
                e.status,
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Tests

/// `name.formatted` as idsync must fill it: the name parts, else the display
/// name.
fn formatted_for(row: &UserRow) -> String {
    let parts: Vec<&str> = [row.given_name.as_str(), row.family_name.as_str()]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        row.display_name.clone()
    } else {
        parts.join(" ")
    }
}

#[test]
fn required_name_formatted_is_filled_from_the_name_parts_and_every_create_succeeds() {
    let mut rig = quirk_rig("q-formatted", 12, Arc::new(RequiresNameFormatted));
    // A user with no name parts (formatted from the display name), and one
    // with a first name only.
    let mono = rig.dir.user_mut("u0010");
    mono.given_name.clear();
    mono.family_name.clear();
    mono.display_name = "Mononym".into();
    let first_only = rig.dir.user_mut("u0011");
    first_only.family_name.clear();
    first_only.display_name = "Given10".into();
    rig.ws.write_directory(&rig.dir);

    sync_ok(&rig, "the initial sync");
    let posts = sent(&rig.proxy, "POST /Users");
    assert_eq!(posts.len(), rig.dir.users.len(), "{}", rig.proxy.summary());
    for (body, status) in &posts {
        assert_eq!(*status, Some(201), "a create was refused: {body}");
        let name = str_at(body, "userName");
        let row = rig
            .dir
            .users
            .iter()
            .find(|u| u.user_name() == name)
            .unwrap_or_else(|| panic!("a create for nobody: {body}"));
        assert_eq!(
            str_at(&body["name"], "formatted"),
            formatted_for(row),
            "{name}: name.formatted"
        );
    }
    assert_target_matches(&rig.dir, &[], &rig.server.contents());
    assert_plans_empty(&rig, "the initial sync");

    let check = rig.ws.run(&["check"]);
    check.assert_code(0);
    let said = check
        .stdout
        .lines()
        .any(|l| l.contains("name.formatted") && l.to_lowercase().contains("fill"));
    assert!(
        said,
        "`check` does not say it fills name.formatted:\n{}",
        check.dump()
    );
}

/// A required attribute nothing produces: `check` fails naming it and the
/// mapping line to add; a sync refuses every create unsent (exit 1, each
/// user's operation naming it) and records what the target requires, so
/// `validate` fails too; with the line added, everything converges.
#[test]
fn a_required_attribute_nothing_produces_fails_check_and_validate_and_is_never_sent() {
    let mut rig = quirk_rig("q-nick", 6, Arc::new(RequiresNickName));
    let check = rig.ws.run(&["check"]);
    check.assert_code(2);
    assert!(
        check.stderr.contains("the target requires User nickName")
            && check.stderr.contains("users.attributes")
            && check
                .stderr
                .contains("nickName: <source attribute or expression>"),
        "{}",
        check.dump()
    );
    // Before any sync, validate has nothing recorded to hold the mapping to.
    rig.ws.run(&["validate"]).assert_code(0);

    let sync = rig.ws.run(&["sync"]);
    sync.assert_code(1);
    assert!(
        sync.stderr
            .contains("is not created: the target requires nickName"),
        "{}",
        sync.dump()
    );
    assert!(
        sent(&rig.proxy, "POST /Users").is_empty(),
        "a create the schema refuses was sent: {}",
        rig.proxy.summary()
    );
    let validate = rig.ws.run(&["validate"]);
    validate.assert_code(2);
    assert!(
        validate
            .stderr
            .contains("the target requires User nickName")
            && validate.stderr.contains("at the last sync"),
        "{}",
        validate.dump()
    );

    // The line the hint names, added.
    let mapping = std::fs::read_to_string(crate::harness::Workspace::mapping_path())
        .expect("mapping")
        .replace(
            "    title: title\n",
            "    title: title\n    nickName: { expr: \"given_name\" }\n",
        );
    rig.ws.write_file("mapping.yaml", mapping.as_bytes());
    let config = rig.ws.config_text().replace(
        &crate::harness::Workspace::mapping_path()
            .display()
            .to_string(),
        "mapping.yaml",
    );
    rig.ws.raw_config = Some(config);
    rig.ws.write_config();
    rig.ws.run(&["validate"]).assert_code(0);
    rig.ws.run(&["check"]).assert_code(0);
    sync_ok(&rig, "with nickName mapped");
    let posts = sent(&rig.proxy, "POST /Users");
    assert_eq!(posts.len(), rig.dir.users.len(), "{}", rig.proxy.summary());
    assert!(posts.iter().all(|(_, status)| *status == Some(201)));
}

#[test]
fn required_member_ref_is_sent_built_from_the_base_url_and_groups_are_created() {
    let mut rig = quirk_rig("q-member-ref", 12, Arc::new(RequiresMemberRef));
    sync_ok(&rig, "the initial sync");
    assert_exact(&rig.server, &rig.ws, &rig.dir);
    assert_plans_empty(&rig, "the initial sync");

    // A member moves: added elsewhere (with `$ref`), removed here.
    let moving = rig.dir.groups["group-01"][0].clone();
    rig.dir
        .groups
        .get_mut("group-01")
        .expect("group")
        .retain(|m| *m != moving);
    rig.dir
        .groups
        .get_mut("group-03")
        .expect("group")
        .push(moving);
    rig.ws.write_directory(&rig.dir);
    sync_ok(&rig, "a membership move");
    assert_exact(&rig.server, &rig.ws, &rig.dir);

    let base = rig.proxy.base_url();
    let mut members = 0;
    for e in rig.proxy.entries() {
        if e.kind != "POST /Groups" && e.kind != "PATCH /Groups" {
            continue;
        }
        assert!(
            !matches!(e.status, Some(400)),
            "refused: {} {} {}",
            e.method,
            e.path,
            e.body
        );
        let req = Exchange {
            method: e.method.clone(),
            path: e.path.clone(),
            body: e.body.clone(),
        };
        for m in members_sent(&req) {
            members += 1;
            assert_eq!(
                str_at(&m, "$ref"),
                format!("{base}/Users/{}", str_at(&m, "value")),
                "{}",
                e.body
            );
        }
    }
    assert!(members > 0, "no members were sent: {}", rig.proxy.summary());
}

#[test]
fn case_sensitive_uniqueness_adopts_a_user_made_by_hand_in_another_case() {
    let mut rig = quirk_rig(
        "q-case-unique",
        6,
        Arc::new(CaseSensitiveUniqueness::default()),
    );
    sync_ok(&rig, "the initial sync");

    // An administrator made the account by hand, in other case.
    let joiner = UserRow::new("u0100", "pre.existing@example.com", "Pre", "Existing");
    let mut by_hand = ScimServer::user_body(&joiner);
    by_hand["userName"] = json!("Pre.Existing@Example.com");
    by_hand["emails"][0]["value"] = json!("Pre.Existing@Example.com");
    by_hand
        .as_object_mut()
        .expect("object")
        .remove("externalId");
    let hand_id = rig.server.create_user(by_hand);
    rig.dir.users.push(joiner.clone());
    rig.dir
        .groups
        .get_mut("group-01")
        .expect("group")
        .push(joiner.id.clone());
    rig.ws.write_directory(&rig.dir);

    sync_ok(&rig, "the joiner");
    let mut contents = rig.server.contents();
    let marked: Vec<&str> = contents
        .users
        .iter()
        .map(|u| str_at(u, "userName"))
        .filter(|n| n.contains(CASE_MARK))
        .collect();
    assert!(marked.is_empty(), "a case variant was created: {marked:?}");
    assert_no_duplicates(&contents);
    assert_eq!(
        contents.user_id(&joiner.user_name()),
        hand_id,
        "the account made by hand is adopted"
    );
    // Case is the schema's business (caseExact false): the adopted account
    // may keep the case it was made in; everything else is the source's.
    for u in &mut contents.users {
        if str_at(u, "id") == hand_id {
            assert!(str_at(u, "userName").eq_ignore_ascii_case(&joiner.user_name()));
            u["userName"] = json!(joiner.user_name());
            let email = str_at(&u["emails"][0], "value").to_owned();
            assert!(email.eq_ignore_ascii_case(&joiner.user_name()), "{u}");
            u["emails"][0]["value"] = json!(joiner.user_name());
        }
    }
    assert_target_matches(&rig.dir, &[], &contents);
    assert_plans_empty(&rig, "the joiner");
}

#[test]
fn a_429_whose_reset_is_written_to_the_minute_is_waited_out() {
    // From the 15th request, the window is shut until the next minute starts.
    let shut_until: Arc<Mutex<Option<chrono::DateTime<chrono::Utc>>>> = Arc::default();
    let schedule: Schedule = {
        let shut_until = Arc::clone(&shut_until);
        Arc::new(move |r| {
            if r.seq < 15 {
                return Fault::Forward;
            }
            let now = chrono::Utc::now();
            let mut until = shut_until.lock().unwrap_or_else(|p| p.into_inner());
            if now < *until.get_or_insert_with(|| next_minute(now)) {
                Fault::MinuteWindow(15)
            } else {
                Fault::Forward
            }
        })
    };
    let rig = rig("q-minute-reset", 40, 3, schedule);
    // Early in a minute, so the window stays shut long enough that only
    // waiting for the reset gets through.
    wait_early_in_a_minute(30);
    sync_ok(&rig, "one run through a shut window");

    let entries = rig.proxy.entries();
    let refused: Vec<_> = entries.iter().filter(|e| e.fault == "429-minute").collect();
    assert!(!refused.is_empty(), "{}", rig.proxy.summary());
    // Only the requests in flight meet the shut window; then nothing arrives
    // before the reset.
    assert!(
        refused.len() <= 8,
        "{} requests refused: {}",
        refused.len(),
        rig.proxy.summary()
    );
    let first = rig.proxy.wall_time(refused[0].arrived);
    let reset = next_minute(first);
    let early: Vec<String> = entries
        .iter()
        .filter(|e| {
            let at = rig.proxy.wall_time(e.arrived);
            at > first + chrono::Duration::seconds(1)
                && at < reset - chrono::Duration::milliseconds(200)
        })
        .map(|e| {
            format!(
                "{} {} at {}",
                e.method,
                e.path,
                rig.proxy.wall_time(e.arrived)
            )
        })
        .collect();
    assert!(
        early.is_empty(),
        "requests before the reset {reset} named by a 429 at {first}: {early:#?}"
    );
    rig.proxy.set_schedule(pass_through());
    assert_exact(&rig.server, &rig.ws, &rig.dir);
}
