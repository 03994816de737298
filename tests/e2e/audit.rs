//! `idsync audit` against a real scim2-server: a clean target right after a
//! sync reports nothing and exits 0; hand-made accounts and groups, members
//! added by hand, a title edited by hand, a removal held by a guard and what
//! `policy.protect` names are each reported where they belong, in text, JSON,
//! CSV and an HTML page checked in headless Chromium, and the audit changes
//! neither the target nor the state DB.

use regex::Regex;
use serde_json::{Value, json};

use crate::harness::{
    Directory, Idsync, ScimServer, USER_SCHEMA, UserRow, Workspace, fresh_token, str_at,
};
use crate::report::{assert_refers_to_nothing, assert_screenshot, run_chromium};

const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// Five people; engineering (u1, u2, u3) and finance (u4).
pub(crate) fn directory() -> Directory {
    let users = vec![
        UserRow::new("u1", "ada@example.com", "Ada", "Lovelace"),
        UserRow::new("u2", "grace@example.com", "Grace", "Hopper"),
        UserRow::new("u3", "alan@example.com", "Alan", "Turing"),
        UserRow::new("u4", "edsger@example.com", "Edsger", "Dijkstra"),
        UserRow::new("u5", "barbara@example.com", "Barbara", "Liskov"),
    ];
    let groups = [
        (
            "engineering".to_owned(),
            vec!["u1".to_owned(), "u2".to_owned(), "u3".to_owned()],
        ),
        ("finance".to_owned(), vec!["u4".to_owned()]),
    ]
    .into_iter()
    .collect();
    Directory { users, groups }
}

/// The audit's text with what varies between runs replaced: times, the
/// port, and every SCIM id the target holds by a label naming its object.
fn redacted(text: &str, server: &ScimServer) -> String {
    let mut out = text.to_owned();
    let contents = server.contents();
    for u in &contents.users {
        out = out.replace(str_at(u, "id"), &format!("[id {}]", str_at(u, "userName")));
    }
    for g in &contents.groups {
        out = out.replace(
            str_at(g, "id"),
            &format!("[id {}]", str_at(g, "displayName")),
        );
    }
    let time = Regex::new(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
        .expect("regex");
    let port = Regex::new(r"127\.0\.0\.1:\d+").expect("regex");
    let out = time.replace_all(&out, "[time]");
    port.replace_all(&out, "127.0.0.1:[port]").into_owned()
}

fn hand_made(server: &ScimServer, user_name: &str, active: bool) -> String {
    server.create_user(json!({
        "schemas": [USER_SCHEMA],
        "userName": user_name,
        "active": active,
    }))
}

/// Adds `user_id` to a group by hand.
fn add_member(server: &ScimServer, group_id: &str, user_id: &str) {
    let (status, body) = server.request_at(
        &server.base_url(),
        reqwest::Method::PATCH,
        &format!("/Groups/{group_id}"),
        Some(json!({
            "schemas": [PATCH_SCHEMA],
            "Operations": [{ "op": "add", "path": "members", "value": [{ "value": user_id }] }],
        })),
    );
    assert!(
        matches!(status, 200 | 204),
        "add member: HTTP {status}: {body}"
    );
}

#[test]
fn audit_of_a_clean_target_right_after_a_sync_reports_nothing_and_exits_0() {
    let server = ScimServer::start(&fresh_token("audit-clean"));
    let ws = Workspace::new(&server);
    // Before any sync: an empty target and no state DB, which audit does not make.
    let out = ws.run(&["audit"]);
    out.assert_code(0);
    assert!(out.stdout.contains("\nNothing found:"), "{}", out.dump());
    assert!(!ws.state_db().exists(), "audit created the state DB");

    ws.write_directory(&directory());
    ws.sync_ok();
    let out = ws.run(&["audit"]);
    out.assert_code(0);
    insta::assert_snapshot!("audit_clean_text", redacted(&out.stdout, &server));
    let json = ws.run(&["audit", "--format", "json"]);
    json.assert_code(0);
    let report = json.json();
    for finding in [
        "orphans",
        "stale",
        "foreign_members",
        "unmanaged_groups",
        "protected",
    ] {
        assert_eq!(report[finding], json!([]), "{finding}: {report}");
    }
    assert_eq!(report["drift"]["users"], 0, "{report}");
    assert_eq!(
        (&report["clean"], &report["findings"]),
        (&json!(true), &json!(0))
    );
    assert_eq!(report["counts"]["managed_users"], 5, "{report}");
}

/// A synced directory, then everything an audit should find done to it.
fn worked_on_by_hand() -> (ScimServer, Workspace) {
    let server = ScimServer::start(&fresh_token("audit-findings"));
    let mut ws = Workspace::new(&server);
    let config = ws.config_text();
    let protect = "  protect: { users: [admin@example.com], groups: [site-admins] }\n";
    assert!(config.contains("  groups: {"), "{config}");
    ws.raw_config = Some(config.replacen("  groups: {", &format!("{protect}  groups: {{"), 1));
    let mut dir = directory();
    ws.write_directory(&dir);
    ws.sync_ok();

    let contents = server.contents();
    let engineering = contents.group_id("engineering");
    // Accounts made by hand: one active (an orphan, put into engineering and
    // a hand-made group), one inactive (no access), one protected.
    let stranger = hand_made(&server, "stranger@example.com", true);
    hand_made(&server, "gone@example.com", false);
    hand_made(&server, "admin@example.com", true);
    add_member(&server, &engineering, &stranger);
    server.create_group("Contractors", vec![json!({ "value": stranger })]);
    server.create_group("site-admins", Vec::new());
    // A managed user added by hand to a group the source does not put him in.
    add_member(
        &server,
        &engineering,
        &contents.user_id("edsger@example.com"),
    );
    // A title edited by hand.
    server.patch_user_title(&contents.user_id("ada@example.com"), "Changed by hand");

    // Grace and Alan leave; the removal guard holds their removals.
    for key in ["u2", "u3"] {
        dir.remove_user(key);
    }
    ws.write_directory(&dir);
    let mut stopping = ws.raw_config.clone().expect("raw config");
    stopping = stopping.replacen("max_removals: 100%", "max_removals: 1", 1);
    ws.raw_config = Some(stopping);
    ws.run(&["sync"]).assert_code(3);
    (server, ws)
}

#[test]
fn audit_reports_orphans_stale_access_hand_made_group_access_and_drift_and_exits_1() {
    let (server, ws) = worked_on_by_hand();
    let target_before = server.contents().normalized();
    let state_before = ws.state_bytes();

    let text = ws.run(&["audit"]);
    text.assert_code(1);
    insta::assert_snapshot!("audit_findings_text", redacted(&text.stdout, &server));

    let json = ws.run(&["audit", "--format", "json"]);
    json.assert_code(1);
    let report = json.json();
    assert_eq!(
        (&report["clean"], &report["findings"]),
        (&json!(false), &json!(9))
    );
    let orphans = report["orphans"].as_array().expect("orphans");
    assert_eq!(orphans.len(), 1, "{report}");
    assert_eq!(orphans[0]["user_name"], "stranger@example.com");
    assert_eq!(orphans[0]["groups"], json!(["Contractors", "engineering"]));
    assert!(
        orphans[0]["created"]
            .as_str()
            .is_some_and(|t| t.starts_with("20")),
        "meta.created: {report}"
    );
    let stale: Vec<(&str, &str)> = report["stale"]
        .as_array()
        .expect("stale")
        .iter()
        .map(|s| (str_at(s, "key"), str_at(s, "source")))
        .collect();
    assert_eq!(
        stale,
        [("u2", "not in the source"), ("u3", "not in the source")]
    );
    for s in report["stale"].as_array().expect("stale") {
        assert!(
            str_at(s, "reason").starts_with("its removal is held by a guard: the plan removes"),
            "{s}"
        );
    }
    let members: Vec<(&str, &str, Value)> = report["foreign_members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| (str_at(m, "group"), str_at(m, "user_name"), m["key"].clone()))
        .collect();
    assert_eq!(
        members,
        [
            ("engineering", "alan@example.com", json!("u3")),
            ("engineering", "edsger@example.com", json!("u4")),
            ("engineering", "grace@example.com", json!("u2")),
            ("engineering", "stranger@example.com", Value::Null),
        ],
        "{report}"
    );
    assert_eq!(report["unmanaged_groups"][0]["display_name"], "Contractors");
    assert_eq!(report["unmanaged_groups"].as_array().map(Vec::len), Some(1));
    assert_eq!(report["drift"]["by_attribute"], json!({ "title": 1 }));
    let protected: Vec<(&str, &str)> = report["protected"]
        .as_array()
        .expect("protected")
        .iter()
        .map(|p| (str_at(p, "kind"), str_at(p, "name")))
        .collect();
    assert_eq!(
        protected,
        [("group", "site-admins"), ("user", "admin@example.com")]
    );

    let csv = ws.run(&["audit", "--format", "csv"]);
    csv.assert_code(1);
    assert!(
        csv.stdout
            .lines()
            .any(|l| l.starts_with("\"orphan\",\"stranger@example.com\"")),
        "{}",
        csv.stdout
    );
    assert!(
        csv.stdout.starts_with("\"finding\",\"name\",\"key\""),
        "{}",
        csv.stdout
    );

    // The audit wrote nothing anywhere.
    assert_eq!(server.contents().normalized(), target_before);
    assert_eq!(
        ws.state_bytes(),
        state_before,
        "the audit changed the state DB"
    );
}

#[test]
fn the_audit_page_renders_in_chromium_with_a_row_per_finding() {
    let (_server, ws) = worked_on_by_hand();
    let page = ws.path().join("audit.html");
    let page_arg = page.display().to_string();
    let out = ws.run(&["audit", "--format", "html", "--out", &page_arg]);
    out.assert_code(1);
    assert!(out.stdout.is_empty(), "{}", out.dump());
    let dom = run_chromium(&page, &["--dump-dom".to_owned()]);
    for (class, n) in [
        ("orphan", 1),
        ("stale", 2),
        ("foreign-member", 4),
        ("unmanaged-group", 1),
        ("protected", 2),
    ] {
        assert_eq!(
            dom.matches(&format!("<tr class=\"{class}\">")).count(),
            n,
            "{class}: {dom}"
        );
    }
    assert!(
        dom.contains("<li class=\"drift-attribute\">title: 1</li>"),
        "{dom}"
    );
    assert!(dom.contains(r#"<p id="verdict" class="failed">"#), "{dom}");
    assert_refers_to_nothing(&dom, &["http://127.0.0.1:"]);
    assert_screenshot(&page, &ws.path().join("audit.png"));
}
