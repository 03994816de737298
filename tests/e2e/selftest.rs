//! Tests of the harness itself, independent of the engine: the SCIM server starts
//! and stops, the generated CSV parses back to the same records, and
//! `assert_target_matches` accepts a target made by hand to match and rejects one
//! that differs.

use std::collections::BTreeMap;

use crate::harness::{
    Directory, ScimServer, UserRow, assert_target_matches, csv_line, fresh_token, mentions_line,
};

/// Fills `server` by hand with what the engine should make of `dir`.
fn populate(server: &ScimServer, dir: &Directory) -> BTreeMap<String, String> {
    let mut ids = BTreeMap::new();
    for u in &dir.users {
        ids.insert(u.id.clone(), server.create_user(ScimServer::user_body(u)));
    }
    ids
}

#[test]
fn harness_server_lifecycle_and_comparison() {
    let server = ScimServer::start(&fresh_token("self"));
    let pid = server.pid();
    let dir = Directory::generate(25, 3);
    let ids = populate(&server, &dir);
    // Groups by hand, with members.
    for (name, members) in &dir.groups {
        let members: Vec<_> = members
            .iter()
            .map(|k| serde_json::json!({ "value": ids[k] }))
            .collect();
        server.create_group(name, members);
    }
    let contents = server.contents();
    assert_eq!(contents.users.len(), 25);
    assert_target_matches(&dir, &[], &contents);

    // A difference is reported, readably.
    let mut other = dir.clone();
    other.user_mut("u0002").title = "Something else".into();
    let err = std::panic::catch_unwind(|| assert_target_matches(&other, &[], &contents))
        .expect_err("a differing title must fail the comparison");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("u0002") && msg.contains("title"), "{msg}");

    // Drift helpers.
    let u3 = contents.user_id(&dir.user("u0003").user_name());
    server.patch_user_title(&u3, "By hand");
    let g = contents.group_id("group-01");
    let member = ids[&dir.groups["group-01"][0]].clone();
    server.remove_group_member(&g, &member);
    server.delete_user(&ids["u0004"]);
    let after = server.contents();
    assert_eq!(after.users.len(), 24);
    assert_eq!(
        crate::harness::str_at(after.user(&dir.user("u0003").user_name()), "title"),
        "By hand"
    );
    assert!(std::panic::catch_unwind(|| assert_target_matches(&dir, &[], &after)).is_err());

    drop(server);
    // Killed by PID on drop.
    let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ");
    assert!(!alive, "scim2-server {pid} still running after drop");
}

#[test]
fn harness_paging_reads_more_than_one_page() {
    let server = ScimServer::start(&fresh_token("paging"));
    let dir = Directory::generate(1005, 0);
    populate(&server, &dir);
    assert_eq!(server.users().len(), 1005);
}

#[test]
fn harness_generated_csv_round_trips() {
    let dir = Directory::generate(40, 4);
    let users_csv = dir.users_csv();
    let mut reader = csv::ReaderBuilder::new().from_reader(users_csv.as_bytes());
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
    assert_eq!(rows.len(), 40);
    for (row, u) in rows.iter().zip(&dir.users) {
        let back = UserRow {
            id: row[0].into(),
            email: row[1].into(),
            given_name: row[2].into(),
            family_name: row[3].into(),
            display_name: row[4].into(),
            title: row[5].into(),
            department: row[6].into(),
            active: &row[7] == "true",
        };
        assert_eq!(&back, u);
        // Each record is on its own line, as `line_of` assumes.
        assert_eq!(
            row.position().expect("pos").line() as usize,
            dir.line_of(&u.id)
        );
    }
    let text = dir.users_csv();
    for needle in [
        "Müller",
        "Nuñez",
        "Østergaard",
        "山田",
        "\"Director, \"\"Special\"\" Projects\"",
        "R\\D",
    ] {
        assert!(text.contains(needle), "generator lost {needle}");
    }
    assert!(dir.users.iter().any(|u| !u.active));
    assert!(dir.groups.values().any(Vec::is_empty));
    let groups_csv = dir.groups_csv();
    let mut reader = csv::ReaderBuilder::new().from_reader(groups_csv.as_bytes());
    assert!(
        reader
            .records()
            .all(|r| r.map(|r| r.len() == 2).unwrap_or(false))
    );
    assert_eq!(
        csv_line(&["a,b".into(), "c\"d".into()]),
        "\"a,b\",\"c\"\"d\""
    );
}

#[test]
fn harness_mentions_line() {
    assert!(mentions_line("error: users.csv line 12: bad", 12));
    assert!(mentions_line("users.csv:12:3: bad", 12));
    assert!(mentions_line("duplicate key on lines 4 and 12", 12));
    assert!(mentions_line("Line: 7", 7));
    assert!(!mentions_line("line 120", 12));
    assert!(!mentions_line("line 112", 12));
    assert!(!mentions_line("took 12 ms", 12));
}

/// A quirk that stores every `title` upper-cased and refuses `DELETE`.
struct ShoutingTitles;

impl crate::proxy::Quirk for ShoutingTitles {
    fn request(
        &self,
        req: &mut crate::proxy::Exchange,
        _upstream: &crate::proxy::Upstream,
    ) -> Option<crate::proxy::Answer> {
        if req.method == "DELETE" {
            return Some(crate::proxy::Answer::error(403, "deletes are refused here"));
        }
        if let Some(mut body) = req.json().filter(|_| req.method == "POST")
            && let Some(title) = body.get("title").and_then(|t| t.as_str())
        {
            body["title"] = title.to_uppercase().into();
            req.body = body.to_string();
        }
        None
    }
}

#[test]
fn proxy_quirk_rewrites_requests_and_answers_itself() {
    let server = ScimServer::start(&fresh_token("quirk"));
    let proxy = crate::proxy::FaultProxy::start(server.port(), crate::proxy::pass_through());
    proxy.set_quirks(vec![std::sync::Arc::new(ShoutingTitles)]);
    let base = proxy.base_url();
    let (status, created) = server.request_at(
        &base,
        reqwest::Method::POST,
        "/Users",
        Some(serde_json::json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "quirk@example.com",
            "title": "Engineer",
        })),
    );
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["title"], "ENGINEER", "{created}");
    let id = created["id"].as_str().expect("id");
    let (status, _) = server.request_at(
        &base,
        reqwest::Method::DELETE,
        &format!("/Users/{id}"),
        None,
    );
    assert_eq!(status, 403);
    assert_eq!(
        server.users().len(),
        1,
        "the refused DELETE never reached the server"
    );
}
