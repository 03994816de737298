//! CSV → SCIM end to end: initial sync, every kind of change, dry runs, `--full`
//! repair and adoption, saved plans, guards, the lock, and unreachable targets.
//! Each test has its own `scim2-server` and workspace.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{
    Directory, ENTERPRISE_SCHEMA, Idsync, SUMMARY_KEYS, ScimServer, SilentTarget, UserRow,
    Workspace, assert_target_matches, closed_port_url, fresh_token, operations, ops_of, str_at,
    summary_count, synced, wait_until,
};

#[test]
fn initial_sync_creates_everything_and_second_plan_is_empty() {
    let server = ScimServer::start(&fresh_token("init"));
    let ws = Workspace::new(&server);
    let dir = Directory::generate(300, 10);
    ws.write_directory(&dir);

    let summary = ws.sync_ok();
    // Users inactive in the source are not created.
    let active = dir.users.iter().filter(|u| u.active).count() as u64;
    assert!(
        active < 300,
        "the generator should include an inactive user"
    );
    assert_eq!(summary_count(&summary, "create_users"), active, "{summary}");
    assert_eq!(summary_count(&summary, "create_groups"), 10, "{summary}");
    assert_eq!(summary["failed"].as_u64(), Some(0), "{summary}");
    assert_eq!(summary["exit_code"].as_i64(), Some(0), "{summary}");
    assert!(
        summary["applied"].as_u64().unwrap_or(0) >= active + 10,
        "{summary}"
    );
    assert!(summary["duration_ms"].is_u64(), "{summary}");
    assert!(summary["skipped"].is_u64(), "{summary}");

    let contents = server.contents();
    assert_eq!(contents.users.len() as u64, active);
    assert_target_matches(&dir, &[], &contents);

    let plan = ws.plan_json();
    assert_eq!(operations(&plan).len(), 0, "second plan: {plan}");
    for key in SUMMARY_KEYS {
        assert_eq!(summary_count(&plan, key), 0, "summary.{key} of {plan}");
    }
    assert!(plan["fingerprint"].is_string(), "{plan}");

    // A second sync with nothing to do is a no-op that still exits 0.
    let again = ws.sync_ok();
    assert_eq!(again["applied"].as_u64(), Some(0), "{again}");
    assert_eq!(server.contents().normalized(), contents.normalized());
}

#[test]
fn attribute_change_is_pushed() {
    let (server, ws, mut dir) = synced(20, 3);
    let id_before = server.contents().user_id(&dir.user("u0003").user_name());
    dir.user_mut("u0003").title = "Chief Widget Officer".into();
    dir.user_mut("u0004").department = "Ünïcödé Dept".into();
    ws.write_directory(&dir);

    let plan = ws.plan_json();
    let updates = ops_of(&plan, "update_user");
    assert_eq!(updates.len(), 2, "{plan}");
    assert_eq!(summary_count(&plan, "update_users"), 2, "{plan}");
    assert!(updates.iter().any(|o| o["key"] == "u0003"), "{plan}");

    ws.sync_ok();
    let contents = server.contents();
    assert_target_matches(&dir, &[], &contents);
    assert_eq!(contents.user_id(&dir.user("u0003").user_name()), id_before);
    ws.assert_plan_empty();
}

#[test]
fn email_change_keeps_the_scim_id() {
    let (server, ws, mut dir) = synced(20, 3);
    let old = dir.user("u0010").user_name();
    let id_before = server.contents().user_id(&old);
    dir.user_mut("u0010").email = "renamed.person@example.com".into();
    ws.write_directory(&dir);

    let plan = ws.plan_json();
    assert_eq!(ops_of(&plan, "update_user").len(), 1, "{plan}");
    assert_eq!(ops_of(&plan, "create_user").len(), 0, "{plan}");

    ws.sync_ok();
    let contents = server.contents();
    assert_target_matches(&dir, &[], &contents);
    assert_eq!(
        contents.user_id("renamed.person@example.com"),
        id_before,
        "an email change must update the account in place, not recreate it"
    );
    assert!(contents.users_named(&old).is_empty());
    ws.assert_plan_empty();
}

#[test]
fn removed_user_is_disabled_then_reenabled_with_the_same_id() {
    let (server, ws, mut dir) = synced(20, 3);
    let full = dir.clone();
    let name = dir.user("u0002").user_name();
    let id_before = server.contents().user_id(&name);

    let removed = dir.remove_user("u0002");
    ws.write_directory(&dir);
    let plan = ws.plan_json();
    assert_eq!(ops_of(&plan, "disable_user").len(), 1, "{plan}");
    assert_eq!(summary_count(&plan, "disable_users"), 1, "{plan}");
    assert!(ops_of(&plan, "delete_user").is_empty(), "{plan}");
    ws.sync_ok();
    let contents = server.contents();
    assert_target_matches(&dir, std::slice::from_ref(&removed), &contents);
    assert_eq!(contents.user_id(&name), id_before);
    ws.assert_plan_empty();

    // The same user comes back: re-enabled, not recreated.
    ws.write_directory(&full);
    let plan = ws.plan_json();
    assert!(ops_of(&plan, "create_user").is_empty(), "{plan}");
    assert_eq!(ops_of(&plan, "enable_user").len(), 1, "{plan}");
    ws.sync_ok();
    let contents = server.contents();
    assert_target_matches(&full, &[], &contents);
    assert_eq!(contents.user_id(&name), id_before);
    ws.assert_plan_empty();
}

#[test]
fn user_inactive_in_the_source_is_disabled_then_reenabled() {
    let (server, ws, mut dir) = synced(20, 3);
    let full = dir.clone();
    let name = dir.user("u0006").user_name();
    let id_before = server.contents().user_id(&name);

    dir.user_mut("u0006").active = false;
    for members in dir.groups.values_mut() {
        members.retain(|m| m != "u0006");
    }
    ws.write_directory(&dir);
    let plan = ws.plan_json();
    assert_eq!(ops_of(&plan, "disable_user").len(), 1, "{plan}");
    ws.sync_ok();
    let contents = server.contents();
    assert_target_matches(&dir, &[], &contents);
    assert_eq!(contents.user(&name)["active"], json!(false));
    assert_eq!(contents.user_id(&name), id_before);
    ws.assert_plan_empty();

    ws.write_directory(&full);
    let plan = ws.plan_json();
    assert_eq!(ops_of(&plan, "enable_user").len(), 1, "{plan}");
    ws.sync_ok();
    let contents = server.contents();
    assert_target_matches(&full, &[], &contents);
    assert_eq!(contents.user_id(&name), id_before);
    ws.assert_plan_empty();
}

#[test]
fn removed_user_is_deleted_then_created_again() {
    let server = ScimServer::start(&fresh_token("del"));
    let mut ws = Workspace::new(&server);
    ws.remove_action = "delete".into();
    let full = Directory::generate(20, 3);
    ws.write_directory(&full);
    ws.sync_ok();
    assert_target_matches(&full, &[], &server.contents());

    let mut dir = full.clone();
    let removed = dir.remove_user("u0005");
    ws.write_directory(&dir);
    let plan = ws.plan_json();
    assert_eq!(ops_of(&plan, "delete_user").len(), 1, "{plan}");
    assert_eq!(summary_count(&plan, "delete_users"), 1, "{plan}");
    ws.sync_ok();
    let contents = server.contents();
    assert!(contents.users_named(&removed.user_name()).is_empty());
    assert_target_matches(&dir, &[], &contents);
    ws.assert_plan_empty();

    ws.write_directory(&full);
    let plan = ws.plan_json();
    assert_eq!(ops_of(&plan, "create_user").len(), 1, "{plan}");
    ws.sync_ok();
    assert_target_matches(&full, &[], &server.contents());
    ws.assert_plan_empty();
}

#[test]
fn membership_churn_adds_and_removes() {
    let (server, ws, mut dir) = synced(30, 4);
    // Move two users from group-01 to group-02, add one to the empty group,
    // remove one from group-03.
    let g1 = dir.groups["group-01"].clone();
    let moved: Vec<String> = g1.iter().take(2).cloned().collect();
    dir.groups
        .get_mut("group-01")
        .expect("group-01")
        .retain(|m| !moved.contains(m));
    for m in &moved {
        let g2 = dir.groups.get_mut("group-02").expect("group-02");
        if !g2.contains(m) {
            g2.push(m.clone());
        }
    }
    dir.groups
        .get_mut("group-04")
        .expect("group-04")
        .push("u0001".into());
    let dropped = dir.groups["group-03"][0].clone();
    dir.groups
        .get_mut("group-03")
        .expect("group-03")
        .retain(|m| *m != dropped);
    ws.write_directory(&dir);

    let plan = ws.plan_json();
    assert!(summary_count(&plan, "add_members") >= 2, "{plan}");
    assert!(summary_count(&plan, "remove_members") >= 2, "{plan}");
    assert!(ops_of(&plan, "create_user").is_empty(), "{plan}");
    assert!(ops_of(&plan, "update_user").is_empty(), "{plan}");

    ws.sync_ok();
    assert_target_matches(&dir, &[], &server.contents());
    ws.assert_plan_empty();
}

#[test]
fn group_added_and_group_removed() {
    let (server, ws, mut dir) = synced(20, 3);
    let old_group_id = server.contents().group_id("group-02");

    dir.groups.insert(
        "new-team, \"Ω\"".into(),
        vec!["u0001".into(), "u0002".into()],
    );
    dir.groups.remove("group-02");
    ws.write_directory(&dir);

    let plan = ws.plan_json();
    assert_eq!(ops_of(&plan, "create_group").len(), 1, "{plan}");
    assert_eq!(ops_of(&plan, "delete_group").len(), 1, "{plan}");
    assert_eq!(summary_count(&plan, "create_groups"), 1, "{plan}");
    assert_eq!(summary_count(&plan, "delete_groups"), 1, "{plan}");

    ws.sync_ok();
    let contents = server.contents();
    assert_target_matches(&dir, &[], &contents);
    assert!(
        contents
            .groups
            .iter()
            .all(|g| str_at(g, "id") != old_group_id),
        "group-02 must be deleted with groups.delete: true"
    );
    ws.assert_plan_empty();
}

#[test]
fn plan_and_dry_run_change_nothing() {
    let (server, ws, mut dir) = synced(20, 3);
    // Pending changes of every kind.
    dir.user_mut("u0003").title = "Changed".into();
    dir.remove_user("u0004");
    dir.users.push(UserRow::new(
        "u9001",
        "newcomer@example.com",
        "New",
        "Comer",
    ));
    dir.groups.remove("group-01");
    dir.groups.insert("group-new".into(), vec!["u9001".into()]);
    ws.write_directory(&dir);

    let before_target = server.contents().normalized();
    let before_state = ws.state_bytes();
    assert!(!before_state.is_empty(), "no state DB after the first sync");

    let plan = ws.plan_json();
    assert!(operations(&plan).len() >= 5, "{plan}");
    ws.run(&["plan"]).assert_code(0);
    // A dry run is the plan rendered and stopped: the same document.
    let dry = ws
        .run(&["sync", "--dry-run", "--format", "json"])
        .assert_code(0)
        .json();
    assert_eq!(dry, plan, "sync --dry-run --format json is not the plan");
    ws.run(&["sync", "--dry-run"]).assert_code(0);
    ws.run(&["plan", "--full", "--format", "json"])
        .assert_code(0);
    ws.run(&["sync", "--full", "--dry-run"]).assert_code(0);

    assert_eq!(server.contents().normalized(), before_target);
    assert!(
        ws.state_bytes() == before_state,
        "plan / sync --dry-run changed the state DB file"
    );
    // And the plan is still the same plan.
    let again = ws.plan_json();
    assert_eq!(operations(&again), operations(&plan));
    assert_eq!(again["fingerprint"], plan["fingerprint"]);
}

#[test]
fn full_sync_repairs_drift_and_leaves_strangers_alone() {
    let (server, ws, dir) = synced(30, 3);
    let before = server.contents();

    // Drift made by hand in the target.
    let changed = dir.user("u0003").user_name();
    server.patch_user_title(&before.user_id(&changed), "Changed by hand");
    let deleted = dir.user("u0004").user_name();
    let deleted_id = before.user_id(&deleted);
    // scim2-server keeps a deleted user's id in its groups; real targets drop it,
    // so do that by hand too.
    for (name, members) in &dir.groups {
        if members.iter().any(|m| m == "u0004") {
            server.remove_group_member(&before.group_id(name), &deleted_id);
        }
    }
    server.delete_user(&deleted_id);
    let group = "group-01";
    let member_key = dir.groups[group][0].clone();
    let member_id = before.user_id(&dir.user(&member_key).user_name());
    server.remove_group_member(&before.group_id(group), &member_id);
    let stranger = "stranger@example.com";
    let stranger_id = server.create_user(json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": stranger,
        "title": "Not from the directory",
        "active": true,
    }));

    let plan = ws
        .run(&["plan", "--full", "--format", "json"])
        .assert_code(0)
        .json();
    assert!(!operations(&plan).is_empty(), "--full saw no drift: {plan}");

    ws.run(&["sync", "--full", "--format", "json"])
        .assert_code(0);
    let after = server.contents();
    assert_target_matches(&dir, &[], &after.without_user(stranger));
    assert_eq!(after.user_id(&changed), before.user_id(&changed));
    let s = after.user(stranger);
    assert_eq!(str_at(s, "id"), stranger_id);
    assert_eq!(str_at(s, "title"), "Not from the directory");
    assert_eq!(s["active"], json!(true));

    // Repaired: neither a plain nor a full plan has anything left to do.
    ws.assert_plan_empty();
    let plan = ws
        .run(&["plan", "--full", "--format", "json"])
        .assert_code(0)
        .json();
    assert_eq!(operations(&plan).len(), 0, "{plan}");
}

#[test]
fn full_sync_adopts_existing_accounts_without_duplicates() {
    let server = ScimServer::start(&fresh_token("adopt"));
    let dir = Directory::generate(25, 3);
    // Half of the users exist already (made by hand, some attributes differ).
    let mut pre_ids = Vec::new();
    for (i, u) in dir.users.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        let mut body = ScimServer::user_body(u);
        if i % 4 == 0 {
            body["title"] = json!("Stale title");
            body.as_object_mut()
                .expect("object")
                .remove(ENTERPRISE_SCHEMA);
        }
        pre_ids.push((u.user_name(), server.create_user(body)));
    }

    let ws = Workspace::new(&server); // empty state
    ws.write_directory(&dir);
    ws.run(&["sync", "--full", "--format", "json"])
        .assert_code(0);

    let contents = server.contents();
    assert_target_matches(&dir, &[], &contents);
    for (name, id) in &pre_ids {
        assert_eq!(
            contents.users_named(name).len(),
            1,
            "{name} duplicated instead of adopted"
        );
        assert_eq!(
            &contents.user_id(name),
            id,
            "{name} recreated instead of adopted"
        );
    }
    let expected_count = dir
        .users
        .iter()
        .filter(|u| u.active || pre_ids.iter().any(|(n, _)| *n == u.user_name()))
        .count();
    assert_eq!(contents.users.len(), expected_count);
    ws.assert_plan_empty();
}

#[test]
fn saved_plan_is_applied_and_refused_when_config_changed() {
    let (server, ws, dir) = synced(20, 3);
    let mut next = dir.clone();
    next.user_mut("u0002").title = "Planned title".into();
    next.users
        .push(UserRow::new("u9002", "planned@example.com", "Plan", "Ned"));
    ws.write_directory(&next);
    let plan_path = ws.path().join("plan.json");
    let plan_arg = plan_path.display().to_string();
    ws.run(&["plan", "--out", &plan_arg]).assert_code(0);
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&plan_path).expect("plan.json written"))
            .expect("plan.json is JSON");
    assert_eq!(operations(&saved).len(), 2, "{saved}");

    // Editing the CSV after planning is fine: the saved plan is what is applied.
    let mut later = next.clone();
    later.user_mut("u0003").title = "Not in the saved plan".into();
    ws.write_directory(&later);
    ws.run(&["sync", "--plan", &plan_arg, "--format", "json"])
        .assert_code(0);
    assert_target_matches(&next, &[], &server.contents());
    // The later edit is still to do.
    let plan = ws.plan_json();
    assert_eq!(operations(&plan).len(), 1, "{plan}");
    assert_eq!(ops_of(&plan, "update_user")[0]["key"], "u0003", "{plan}");

    // A plan made before a config change is refused as stale.
    ws.run(&["plan", "--out", &plan_arg]).assert_code(0);
    let mut ws = ws;
    ws.remove_action = "delete".into();
    let before = server.contents().normalized();
    let out = ws.run(&["sync", "--plan", &plan_arg]);
    assert_ne!(out.code, 0, "a stale plan was applied\n{}", out.dump());
    assert!(
        out.stderr.to_lowercase().contains("stale"),
        "the refusal should say the plan is stale\n{}",
        out.dump()
    );
    assert_eq!(server.contents().normalized(), before);
}

#[test]
fn saved_plan_is_refused_when_state_changed() {
    let (server, ws, dir) = synced(20, 3);
    let mut next = dir.clone();
    next.user_mut("u0002").title = "Planned title".into();
    ws.write_directory(&next);
    let plan_path = ws.path().join("plan.json").display().to_string();
    ws.run(&["plan", "--out", &plan_path]).assert_code(0);
    // Another sync changes the state before the saved plan is applied.
    ws.sync_ok();
    let before = server.contents().normalized();
    let out = ws.run(&["sync", "--plan", &plan_path]);
    assert_ne!(out.code, 0, "a stale plan was applied\n{}", out.dump());
    assert!(
        out.stderr.to_lowercase().contains("stale"),
        "{}",
        out.dump()
    );
    assert_eq!(server.contents().normalized(), before);
}

#[test]
fn removal_guard_stops_then_allow_deletes_applies() {
    let server = ScimServer::start(&fresh_token("guard"));
    let mut ws = Workspace::new(&server);
    let full = Directory::generate(40, 3);
    ws.write_directory(&full);
    ws.sync_ok();

    ws.max_removals = "10%".into();
    let mut dir = full.clone();
    let mut removed = Vec::new();
    for i in (1..=40).step_by(2) {
        let key = format!("u{i:04}");
        removed.push(dir.remove_user(&key));
    }
    ws.write_directory(&dir);
    let before = server.contents().normalized();

    let out = ws.run(&["sync", "--format", "json"]);
    out.assert_code(3);
    assert_eq!(
        server.contents().normalized(),
        before,
        "the guard let changes through"
    );
    let plan = ws.plan_json();
    assert_eq!(summary_count(&plan, "disable_users"), 20, "{plan}");

    ws.run(&["sync", "--allow-deletes", "--format", "json"])
        .assert_code(0);
    assert_target_matches(&dir, &removed, &server.contents());
    ws.assert_plan_empty();
}

#[test]
fn empty_source_is_refused() {
    let (server, ws, _dir) = synced(20, 3);
    let before = server.contents().normalized();
    ws.write_directory(&Directory::default()); // header-only CSV files
    ws.run(&["sync", "--format", "json"]).assert_code(3);
    assert_eq!(server.contents().normalized(), before);
}

#[test]
fn second_run_with_the_same_state_exits_4() {
    let target = SilentTarget::start();
    let mut ws = Workspace::with_target(&target.base_url(), &fresh_token("lock"));
    ws.timeout = "30s".into();
    ws.write_directory(&Directory::generate(5, 1));

    let mut first = ws.spawn(&["sync", "--format", "json"]);
    // Wait (bounded) until the first run is talking to the hung target, i.e. it is
    // well into its cycle and holds the lock.
    let state_dir = ws.path().join("state");
    let talking = wait_until(Duration::from_secs(20), || {
        let state_touched = std::fs::read_dir(&state_dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        (target.accepted() > 0 && state_touched) || !first.is_running()
    });
    assert!(talking, "the first run never contacted the target");
    assert!(
        first.is_running(),
        "the first run ended before the second started: {}",
        first.wait(Duration::from_secs(5)).dump()
    );

    let started = Instant::now();
    let second = ws.run(&["sync", "--format", "json"]);
    second.assert_code(4);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a held lock should be reported at once, took {:?}",
        started.elapsed()
    );
    assert!(first.is_running(), "the first run should still be waiting");
    drop(first); // killed by PID
}

#[test]
fn wrong_token_exits_5_and_changes_nothing() {
    let (server, mut ws, mut dir) = synced(20, 3);
    let good_plan_before = {
        dir.user_mut("u0002").title = "Pending".into();
        dir.remove_user("u0003");
        ws.write_directory(&dir);
        ws.plan_json()
    };
    let before = server.contents().normalized();

    let real = ws.token.clone();
    ws.token = fresh_token("wrong");
    ws.extra_secrets.push(real.clone());
    ws.run(&["sync", "--format", "json"]).assert_code(5);
    ws.run(&["check"]).assert_code(5);
    assert_eq!(server.contents().normalized(), before);

    ws.token = real;
    let plan = ws.plan_json();
    assert_eq!(operations(&plan), operations(&good_plan_before));
}

#[test]
fn unreachable_target_exits_5() {
    let ws = Workspace::with_target(&closed_port_url(), &fresh_token("closed"));
    ws.write_directory(&Directory::generate(5, 1));
    let started = Instant::now();
    ws.run(&["sync", "--format", "json"]).assert_code(5);
    ws.run(&["check"]).assert_code(5);
    assert!(started.elapsed() < Duration::from_secs(110));
}

#[test]
fn quotes_and_backslashes_in_an_adopted_user_name() {
    let server = ScimServer::start(&fresh_token("quote"));
    let mut dir = Directory::generate(10, 2);
    // The account already exists: the create answers 409 and the engine must find
    // it with a `userName eq "…"` filter whose value needs escaping.
    let tricky = "o'brien\"x\\@example.com";
    dir.user_mut("u0002").email = tricky.into();
    // A first sync without u0002 (a sync without state against a target that
    // holds users stops, so the account is made by hand after it).
    let ws = Workspace::new(&server);
    let mut first = dir.clone();
    first.remove_user("u0002");
    ws.write_directory(&first);
    ws.sync_ok();
    let pre_id = server.create_user(ScimServer::user_body(dir.user("u0002")));

    ws.write_directory(&dir);
    ws.sync_ok();
    let contents = server.contents();
    assert_target_matches(&dir, &[], &contents);
    assert_eq!(contents.users_named(tricky).len(), 1);
    assert_eq!(contents.user_id(tricky), pre_id);
    ws.assert_plan_empty();

    // Also as a plain change of email to a tricky value, and --full.
    let mut dir2 = dir.clone();
    dir2.user_mut("u0003").email = "back\\slash\"q@example.com".into();
    ws.write_directory(&dir2);
    ws.sync_ok();
    ws.run(&["sync", "--full", "--format", "json"])
        .assert_code(0);
    assert_target_matches(&dir2, &[], &server.contents());
}
