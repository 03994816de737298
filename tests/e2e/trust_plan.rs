//! Trust boundaries end to end: a saved plan edited after review is refused
//! before anything is sent; a lost state DB does not pass for a first run; the
//! state files and saved plans are owner-only.

use serde_json::{Value, json};

use crate::harness::{Idsync, ScimServer, Workspace, operations, ops_of, str_at, synced};

/// `plan --out plan.json`; returns the path (as an argument) and the saved JSON.
fn save_plan(ws: &Workspace) -> (String, Value) {
    let path = ws.path().join("plan.json");
    let arg = path.display().to_string();
    ws.run(&["plan", "--out", &arg]).assert_code(0);
    let saved = serde_json::from_slice(&std::fs::read(&path).expect("plan.json written"))
        .expect("plan.json is JSON");
    (arg, saved)
}

fn write_plan(path: &str, plan: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(plan).unwrap()).expect("write plan.json");
}

/// The fingerprint of `plan` as anyone who can read the config could recompute
/// it after editing the operations: the config part and the state generation
/// are visible in the fingerprint the plan already carries.
fn refingerprint(plan: &mut Value) {
    let old = str_at(plan, "fingerprint").to_owned();
    let mut parts = old.split('-');
    let config = parts.next().expect("config part");
    let generation: i64 = parts
        .next()
        .and_then(|g| g.parse().ok())
        .expect("generation part");
    let typed: idsync::plan::Plan =
        serde_json::from_value(plan.clone()).expect("the edited plan still parses");
    plan["fingerprint"] = json!(idsync::plan::fingerprint(
        config,
        generation,
        false,
        &typed.operations,
        &typed.skipped
    ));
}

fn op_mut<'p>(plan: &'p mut Value, name: &str) -> &'p mut Value {
    plan["operations"]
        .as_array_mut()
        .expect("operations")
        .iter_mut()
        .find(|op| op["op"] == name)
        .unwrap_or_else(|| panic!("no {name} in the plan"))
}

fn stranger(server: &ScimServer) -> String {
    server.create_user(json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "ceo@example.com",
        "emails": [{ "value": "ceo@example.com", "type": "work", "primary": true }],
        "active": true,
    }))
}

#[test]
fn edited_scim_id_on_a_delete_is_refused_and_the_foreign_account_untouched() {
    let (server, mut ws, mut dir) = synced(20, 3);
    ws.remove_action = "delete".into();
    let stranger_id = stranger(&server);
    dir.remove_user("u0005");
    ws.write_directory(&dir);
    let (path, mut plan) = save_plan(&ws);
    assert_eq!(ops_of(&plan, "delete_user").len(), 1, "{plan}");
    op_mut(&mut plan, "delete_user")["scim_id"] = json!(stranger_id);
    let before = server.contents().normalized();

    // Edited, fingerprint kept: stale.
    write_plan(&path, &plan);
    let out = ws.run(&["sync", "--plan", &path]);
    out.assert_code(2);
    assert!(out.stderr.contains("stale"), "{}", out.dump());
    assert_eq!(server.contents().normalized(), before);

    // Edited and fingerprinted again: the operation does not match the state.
    refingerprint(&mut plan);
    write_plan(&path, &plan);
    let out = ws.run(&["sync", "--plan", &path]);
    out.assert_code(2);
    assert!(
        out.stderr.contains("does not match the state DB")
            && out.stderr.contains("delete_user \"u0005\"")
            && out.stderr.contains(&stranger_id),
        "the refusal should name the operation and the foreign id\n{}",
        out.dump()
    );
    assert_eq!(server.contents().normalized(), before);
    assert_eq!(server.contents().user_id("ceo@example.com"), stranger_id);
}

#[test]
fn edited_update_pointed_at_another_account_is_refused() {
    let (server, ws, mut dir) = synced(20, 3);
    let stranger_id = stranger(&server);
    dir.user_mut("u0003").title = "Planned title".into();
    ws.write_directory(&dir);
    let (path, mut plan) = save_plan(&ws);
    op_mut(&mut plan, "update_user")["scim_id"] = json!(stranger_id);
    refingerprint(&mut plan);
    write_plan(&path, &plan);
    let before = server.contents().normalized();

    let out = ws.run(&["sync", "--plan", &path]);
    out.assert_code(2);
    assert!(
        out.stderr.contains("update_user \"u0003\""),
        "{}",
        out.dump()
    );
    assert_eq!(server.contents().normalized(), before);
}

#[test]
fn edited_email_value_on_an_update_with_the_fingerprint_kept_is_refused() {
    let (server, ws, mut dir) = synced(20, 3);
    dir.user_mut("u0003").email = "renamed.person@example.com".into();
    ws.write_directory(&dir);
    let (path, mut plan) = save_plan(&ws);
    let update = op_mut(&mut plan, "update_user");
    assert!(update["changes"]["emails"].is_object(), "{update}");
    update["changes"]["emails"]["new"] = json!("attacker@evil.example");
    write_plan(&path, &plan);
    let before = server.contents().normalized();

    let out = ws.run(&["sync", "--plan", &path]);
    out.assert_code(2);
    assert!(out.stderr.contains("stale"), "{}", out.dump());
    assert_eq!(server.contents().normalized(), before);
}

#[test]
fn untouched_saved_plan_still_applies() {
    let (server, mut ws, mut dir) = synced(20, 3);
    ws.remove_action = "delete".into();
    dir.remove_user("u0005");
    dir.user_mut("u0003").email = "renamed.person@example.com".into();
    ws.write_directory(&dir);
    let (path, plan) = save_plan(&ws);
    assert!(operations(&plan).len() >= 3, "{plan}");

    ws.run(&["sync", "--plan", &path, "--format", "json"])
        .assert_code(0);
    let contents = server.contents();
    assert_eq!(contents.users_named("renamed.person@example.com").len(), 1);
    ws.assert_plan_empty();
}

/// Removes the state DB and SQLite's files beside it (the lock file stays).
fn remove_state_db(ws: &Workspace) {
    for suffix in ["", "-wal", "-shm"] {
        let mut path = ws.state_db().into_os_string();
        path.push(suffix);
        let _ = std::fs::remove_file(path);
    }
}

fn group_names(server: &ScimServer) -> Vec<String> {
    let mut names: Vec<String> = server
        .groups()
        .iter()
        .map(|g| str_at(g, "displayName").to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn lost_state_db_stops_sync_until_full_adopts() {
    let (server, ws, dir) = synced(20, 3);
    let groups = group_names(&server);
    assert_eq!(groups.len(), 3);
    let before = server.contents().normalized();

    // A 0-byte state DB, then none at all: both are no state.
    remove_state_db(&ws);
    std::fs::write(ws.state_db(), b"").expect("truncate the state DB");
    for round in 0..2 {
        let plan = ws.run(&["plan"]);
        plan.assert_code(0);
        assert!(
            plan.stderr.contains("warning: `sync` would stop here")
                && plan.stderr.contains("sync --full"),
            "plan should warn (round {round})\n{}",
            plan.dump()
        );
        let out = ws.run(&["sync"]);
        out.assert_code(3);
        assert!(
            out.stderr.contains("records no users, groups or runs")
                && out.stderr.contains("hint:")
                && out.stderr.contains("idsync sync --full"),
            "round {round}\n{}",
            out.dump()
        );
        assert_eq!(server.contents().normalized(), before, "round {round}");
        remove_state_db(&ws);
    }

    ws.run(&["sync", "--full", "--format", "json"])
        .assert_code(0);
    assert_eq!(group_names(&server), groups, "groups duplicated");
    crate::harness::assert_target_matches(&dir, &[], &server.contents());
    ws.assert_plan_empty();
    ws.sync_ok();
    assert_eq!(group_names(&server), groups);
}

#[test]
fn state_files_and_saved_plans_are_owner_only_under_umask_022() {
    use std::os::unix::fs::PermissionsExt;
    let server = ScimServer::start(&crate::harness::fresh_token("mode"));
    let mut ws = Workspace::new(&server);
    ws.umask = Some(0o022);
    let mut dir = crate::harness::Directory::generate(10, 2);
    ws.write_directory(&dir);
    ws.sync_ok();
    dir.user_mut("u0003").title = "Planned".into();
    ws.write_directory(&dir);
    let (path, _) = save_plan(&ws);

    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let state = ws.state_db().parent().unwrap().to_path_buf();
    let files: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(files.len() >= 2, "{files:?}");
    for f in files.iter().chain([&std::path::PathBuf::from(&path)]) {
        assert_eq!(mode(f), 0o600, "{} is not owner-only", f.display());
    }
}

#[test]
fn a_group_made_by_hand_with_a_new_source_groups_name_is_adopted_not_duplicated() {
    // scim2-server, like many servers, accepts a second group with a taken name.
    let (server, ws, mut dir) = synced(6, 2);
    let by_hand = server.create_group("Platform Team", vec![]);
    let first = dir.users[0].id.clone();
    dir.groups
        .insert("Platform Team".to_string(), vec![first.clone()]);
    ws.write_directory(&dir);
    ws.sync_ok();
    let named: Vec<Value> = server
        .groups()
        .into_iter()
        .filter(|g| str_at(g, "displayName") == "Platform Team")
        .collect();
    assert_eq!(named.len(), 1, "{named:?}");
    assert_eq!(str_at(&named[0], "id"), by_hand);
    assert_eq!(
        named[0]["members"].as_array().map(Vec::len),
        Some(1),
        "{named:?}"
    );
    ws.assert_plan_empty();
}
