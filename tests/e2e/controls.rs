//! The controls admins know, end to end against a real scim2-server:
//! `policy.actions` switches (skipped, never sent, logged), `paused: true`
//! (exit 6, nothing read, sent or written), `policy.disabled_action`, the floor
//! of a percentage `max_removals`, and `sync` honouring the quarantine (exit 7,
//! `--force`). What these print is pinned in `snapshots.rs`.

use std::time::Duration;

use serde_json::Value;

use crate::harness::Idsync;
use crate::harness::{
    Directory, ScimServer, Workspace, fresh_token, operations, ops_of, str_at, summary_count,
    synced, wait_until,
};
use crate::proxy::{FaultProxy, pass_through};

/// Sets the workspace's config to the generated one with `policy` lines added
/// under `policy:` and `top` lines at the end.
pub fn set_controls(ws: &mut Workspace, policy: &str, top: &str) {
    ws.raw_config = None;
    let config = ws.config_text();
    assert!(config.contains("policy:\n"), "{config}");
    ws.raw_config = Some(config.replacen("policy:\n", &format!("policy:\n{policy}"), 1) + top);
}

/// The `skipped` array of a JSON plan as `"<op> <key> (<switch>)"`.
fn skipped_of(plan: &Value) -> Vec<String> {
    plan["skipped"]
        .as_array()
        .map(|ops| {
            ops.iter()
                .map(|s| {
                    format!(
                        "{} {} ({})",
                        str_at(s, "op"),
                        str_at(s, "key"),
                        str_at(s, "action_off")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn active(server: &ScimServer, user_name: &str) -> bool {
    server.contents().user(user_name)["active"] == true
}

/// The state DB and its `-wal` file, byte for byte (absent: empty).
fn state_files(ws: &Workspace) -> (Vec<u8>, Vec<u8>) {
    let wal = ws.path().join("state/idsync.db-wal");
    (ws.state_bytes(), std::fs::read(wal).unwrap_or_default())
}

#[test]
fn switched_off_actions_are_planned_as_skipped_never_sent_and_logged() {
    let (server, mut ws, mut dir) = synced(6, 2);
    let before = server.contents().normalized();
    let leaver = dir.remove_user("u0002");
    let mut joiner = leaver.clone();
    joiner.id = "u0100".into();
    joiner.email = "joiner@example.com".into();
    dir.users.push(joiner);
    dir.groups
        .get_mut("group-01")
        .expect("group-01")
        .push("u0100".into());
    ws.write_directory(&dir);
    set_controls(
        &mut ws,
        "  actions: { users: { create: false, disable: false } }\n",
        "",
    );

    let plan = ws.plan_json();
    assert!(operations(&plan).is_empty(), "{plan:#}");
    let skipped = skipped_of(&plan);
    assert_eq!(
        skipped,
        [
            "create_user u0100 (users.create)",
            "add_members group-01 (users.create)",
            "remove_members group-01 (users.disable)",
            "disable_user u0002 (users.disable)"
        ],
        "{plan:#}"
    );
    let text = ws.run(&["plan"]).assert_code(0).stdout.clone();
    assert!(
        text.contains("Skipped, not sent (policy.actions.users.create is off):")
            && text.contains("joiner@example.com"),
        "{text}"
    );

    let run = ws.sync_ok();
    assert_eq!(run["applied"], 0, "{run:#}");
    assert_eq!(
        run["skipped_action_off"].as_u64(),
        Some(skipped.len() as u64)
    );
    assert_eq!(summary_count(&run, "disable_users"), 0, "{run:#}");
    assert_eq!(server.contents().normalized(), before, "something was sent");

    let log = ws
        .run(&["log", "--outcome", "skipped", "--format", "json"])
        .assert_code(0)
        .json();
    let logged = log.as_array().expect("log records");
    assert_eq!(logged.len(), skipped.len(), "{log:#}");
    for record in logged {
        assert!(
            str_at(record, "error").starts_with("action off: policy.actions.users."),
            "{record:#}"
        );
    }
    // Nothing was recorded as done: the next cycle skips them again.
    assert_eq!(skipped_of(&ws.plan_json()), skipped);

    // Switched on again, they are sent.
    set_controls(&mut ws, "", "");
    let run = ws.sync_ok();
    assert_eq!(summary_count(&run, "create_users"), 1, "{run:#}");
    assert_eq!(summary_count(&run, "disable_users"), 1, "{run:#}");
    assert!(active(&server, "joiner@example.com"));
    assert!(!active(&server, &leaver.user_name()));
}

#[test]
fn every_switch_off_leaves_the_target_exactly_as_it_was() {
    let (server, mut ws, mut dir) = synced(8, 3);
    let before = server.contents().normalized();
    dir.remove_user("u0003");
    dir.user_mut("u0001").title = "Rear Admiral".into();
    dir.groups.insert("group-new".into(), vec!["u0001".into()]);
    dir.groups.remove("group-02");
    dir.groups
        .get_mut("group-01")
        .expect("group-01")
        .retain(|m| m != "u0004");
    ws.write_directory(&dir);
    set_controls(
        &mut ws,
        "  actions:\n    users: { create: false, update: false, disable: false, delete: false }\n    groups: { create: false, update: false, delete: false }\n",
        "",
    );
    let plan = ws.plan_json();
    assert!(operations(&plan).is_empty(), "{plan:#}");
    assert!(!skipped_of(&plan).is_empty(), "{plan:#}");
    ws.sync_ok();
    assert_eq!(server.contents().normalized(), before);
}

#[test]
fn a_saved_plan_made_under_other_switches_is_refused() {
    let (server, mut ws, mut dir) = synced(5, 2);
    let before = server.contents().normalized();
    dir.user_mut("u0001").title = "Rear Admiral".into();
    ws.write_directory(&dir);
    let path = ws.path().join("plan.json");
    let arg = path.display().to_string();
    set_controls(&mut ws, "  actions: { users: { update: false } }\n", "");
    ws.run(&["plan", "--out", &arg]).assert_code(0);
    // The switch is on again: the plan that skipped the update is stale.
    set_controls(&mut ws, "", "");
    let out = ws.run(&["sync", "--plan", &arg]);
    out.assert_code(2);
    assert!(out.stderr.contains("is stale"), "{}", out.dump());
    // And the other way round.
    ws.run(&["plan", "--out", &arg]).assert_code(0);
    set_controls(&mut ws, "  actions: { users: { update: false } }\n", "");
    ws.run(&["sync", "--plan", &arg]).assert_code(2);
    assert_eq!(server.contents().normalized(), before);
    // Made and applied under the same switches, it applies, and sends nothing skipped.
    ws.run(&["plan", "--out", &arg]).assert_code(0);
    let out = ws.run(&["sync", "--plan", &arg, "--format", "json"]);
    out.assert_code(0);
    assert_eq!(out.json()["skipped_action_off"], 1, "{}", out.dump());
    assert_eq!(server.contents().normalized(), before);
}

#[test]
fn paused_skips_sync_and_the_daemon_with_exit_6_reading_sending_and_writing_nothing() {
    let server = ScimServer::start(&fresh_token("paused"));
    let proxy = FaultProxy::start(server.port(), pass_through());
    let mut ws = Workspace::with_target(&proxy.base_url(), server.token());
    let mut dir = Directory::generate(5, 2);
    ws.write_directory(&dir);
    ws.sync_ok();
    let before = server.contents().normalized();
    dir.user_mut("u0001").title = "Rear Admiral".into();
    ws.write_directory(&dir);
    set_controls(&mut ws, "", "paused: true\n");
    let metrics = ws.path().join("idsync.prom");
    let metrics_arg = metrics.display().to_string();
    let state = state_files(&ws);
    proxy.clear_log();

    let out = ws.run(&["sync", "--metrics-file", &metrics_arg]);
    out.assert_code(6);
    assert!(out.stdout.is_empty(), "{}", out.dump());
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line:\n{}", out.dump());
    assert!(
        lines[0].contains("provisioning is paused"),
        "{}",
        out.dump()
    );
    assert_eq!(proxy.requests(), 0, "{}", proxy.summary());
    assert_eq!(server.contents().normalized(), before);
    assert_eq!(state_files(&ws), state, "the state DB was written");
    let text = std::fs::read_to_string(&metrics).expect("metrics written");
    assert!(text.contains("\nidsync_paused 1\n"), "{text}");
    assert!(text.contains("\nidsync_last_exit_code 6\n"), "{text}");

    // Not even the source is read: a missing users file is not noticed.
    std::fs::remove_file(ws.path().join("users.csv")).unwrap();
    ws.run(&["sync", "--force"]).assert_code(6);
    ws.write_directory(&dir);

    // plan and status still work, and say so.
    let out = ws.run(&["plan", "--format", "json"]);
    out.assert_code(0);
    assert_eq!(
        ops_of(&out.json(), "update_user").len(),
        1,
        "{}",
        out.dump()
    );
    assert!(
        out.stderr
            .contains("`sync` would skip the cycle: provisioning is paused"),
        "{}",
        out.dump()
    );
    let status = ws.run(&["status"]).assert_code(0).stdout.clone();
    assert!(status.starts_with("Provisioning: paused"), "{status}");
    let json = ws
        .run(&["status", "--format", "json"])
        .assert_code(0)
        .json();
    assert_eq!(json["paused"], true, "{json:#}");
    let validate = ws.run(&["validate"]).assert_code(0).stdout.clone();
    assert!(
        validate.contains("paused: provisioning is paused"),
        "{validate}"
    );
    let check = ws.run(&["check"]).assert_code(0).stdout.clone();
    assert!(
        check.contains("note: paused: provisioning is paused"),
        "{check}"
    );
    // A dry run is the plan: it runs, and says a sync would be skipped.
    let dry = ws.run(&["sync", "--dry-run"]);
    dry.assert_code(0);
    assert!(dry.stdout.contains("Rear Admiral"), "{}", dry.dump());
    assert!(
        dry.stderr.contains("provisioning is paused"),
        "{}",
        dry.dump()
    );

    // The daemon skips every cycle and keeps running.
    ws.raw_config = Some(ws.config_text() + "schedule: { interval: 1s }\n");
    let state = state_files(&ws);
    // (`plan` took its quick look at the target's schema.)
    proxy.clear_log();
    let daemon = ws.spawn(&["daemon"]);
    std::thread::sleep(Duration::from_secs(3));
    daemon.signal("TERM");
    let out = daemon.wait(Duration::from_secs(30));
    out.assert_code(0);
    assert!(
        out.stderr.matches("provisioning is paused").count() >= 2,
        "{}",
        out.dump()
    );
    assert_eq!(proxy.requests(), 0, "{}", proxy.summary());
    assert_eq!(state_files(&ws), state);

    // Resumed, the change goes through.
    set_controls(&mut ws, "", "");
    let run = ws.sync_ok();
    assert_eq!(summary_count(&run, "update_users"), 1, "{run:#}");
}

#[test]
fn a_paused_sync_without_a_state_db_creates_none() {
    let server = ScimServer::start(&fresh_token("paused-new"));
    let mut ws = Workspace::new(&server);
    ws.write_directory(&Directory::generate(3, 1));
    set_controls(&mut ws, "", "paused: true\n");
    ws.run(&["sync"]).assert_code(6);
    assert!(!ws.state_db().exists());
    assert!(server.contents().users.is_empty());
    let status = ws.run(&["status"]).assert_code(0).stdout.clone();
    assert!(
        status.starts_with("Provisioning: paused") && status.contains("No runs yet"),
        "{status}"
    );
}

#[test]
fn a_user_disabled_in_the_source_is_deleted_only_with_disabled_action_remove_action() {
    let server = ScimServer::start(&fresh_token("disabled-action"));
    let mut ws = Workspace::new(&server);
    ws.remove_action = "delete".into();
    let mut dir = Directory::generate(5, 2);
    ws.write_directory(&dir);
    ws.sync_ok();
    let user_name = dir.user("u0002").user_name();
    let id = server.contents().user_id(&user_name);
    dir.user_mut("u0002").active = false;
    ws.write_directory(&dir);

    // The default: disabled (the same account), whatever remove_action says.
    let plan = ws.plan_json();
    assert_eq!(ops_of(&plan, "disable_user").len(), 1, "{plan:#}");
    assert!(ops_of(&plan, "delete_user").is_empty(), "{plan:#}");

    // disabled_action: remove_action: deleted, as a leaver is.
    set_controls(&mut ws, "  disabled_action: remove_action\n", "");
    let plan = ws.plan_json();
    let deletes = ops_of(&plan, "delete_user");
    assert_eq!(deletes.len(), 1, "{plan:#}");
    assert_eq!(str_at(&deletes[0], "key"), "u0002");
    assert_eq!(str_at(&deletes[0], "reason"), "inactive in the source");
    assert!(ops_of(&plan, "disable_user").is_empty(), "{plan:#}");
    let run = ws.sync_ok();
    assert_eq!(summary_count(&run, "delete_users"), 1, "{run:#}");
    let contents = server.contents();
    assert!(contents.users_named(&user_name).is_empty(), "not deleted");
    assert!(
        contents.users.iter().all(|u| str_at(u, "id") != id),
        "the account is still there"
    );
    ws.assert_plan_empty();
}

#[test]
fn a_percentage_removal_limit_lets_the_first_leavers_of_a_small_directory_through() {
    let server = ScimServer::start(&fresh_token("floor"));
    let mut ws = Workspace::new(&server);
    ws.max_removals = "5%".into();
    let mut dir = Directory::generate(19, 2);
    ws.write_directory(&dir);
    ws.sync_ok();
    // 5% of 19 is 0: without a floor the first leaver would stop the cycle.
    let first = dir.remove_user("u0019");
    ws.write_directory(&dir);
    let run = ws.sync_ok();
    assert_eq!(summary_count(&run, "disable_users"), 1, "{run:#}");
    assert!(!active(&server, &first.user_name()));
    // Four more at once are above the floor of 3.
    let before = server.contents().normalized();
    for key in ["u0015", "u0016", "u0017", "u0018"] {
        dir.remove_user(key);
    }
    ws.write_directory(&dir);
    let out = ws.run(&["sync"]);
    out.assert_code(3);
    assert!(
        out.stderr
            .contains("above the limit of 3 (max_removals 5% of 19 managed users, at least 3 for a percentage)"),
        "{}",
        out.dump()
    );
    assert_eq!(server.contents().normalized(), before);
}

#[test]
fn sync_honours_the_quarantine_with_exit_7_until_forced_and_source_failures_count() {
    let (server, ws, dir) = synced(5, 2);
    let before = server.contents().normalized();
    let users = ws.path().join("users.csv");
    std::fs::remove_file(&users).unwrap();
    // Two cycles that cannot read the source: the second quarantines.
    for _ in 0..2 {
        let out = ws.run(&["sync"]);
        out.assert_code(5);
    }
    let runs = |ws: &Workspace| {
        ws.run(&["status", "--format", "json"])
            .assert_code(0)
            .json()["runs"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let recorded = runs(&ws);
    ws.write_directory(&dir);

    // Held: one line naming until when and why; nothing recorded or sent.
    let state = state_files(&ws);
    let out = ws.run(&["sync", "--format", "json"]);
    out.assert_code(7);
    assert!(out.stdout.is_empty(), "{}", out.dump());
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line:\n{}", out.dump());
    assert!(
        lines[0].contains("cycles are quarantined until ")
            && lines[0].contains("2 failed cycles in a row")
            && lines[0].contains("users.csv")
            && lines[0].contains("--force"),
        "{}",
        out.dump()
    );
    assert_eq!(state_files(&ws), state, "a held cycle wrote the state DB");
    assert_eq!(runs(&ws), recorded);
    // A plan and a dry run are never held; the plan says a sync would be.
    let plan = ws.run(&["plan"]);
    plan.assert_code(0);
    assert!(
        plan.stderr
            .contains("`sync` would skip the cycle: cycles are quarantined until"),
        "{}",
        plan.dump()
    );
    ws.run(&["sync", "--dry-run"]).assert_code(0);
    let status = ws.run(&["status"]).assert_code(0).stdout.clone();
    assert!(status.contains("(`sync --force` runs one now)"), "{status}");

    // --force runs it; one that succeeds lifts the quarantine.
    ws.run(&["sync", "--force"]).assert_code(0);
    let status = ws
        .run(&["status", "--format", "json"])
        .assert_code(0)
        .json();
    assert_eq!(status["quarantine"]["failed_cycles"], 0, "{status:#}");
    ws.sync_ok();
    assert_eq!(server.contents().normalized(), before);
}

#[test]
fn the_daemon_honours_the_quarantine_from_the_cycle_and_keeps_running() {
    let (_server, mut ws, _dir) = synced(3, 1);
    std::fs::remove_file(ws.path().join("users.csv")).unwrap();
    ws.raw_config = Some(ws.config_text() + "schedule: { interval: 1s }\n");
    let daemon = ws.spawn(&["daemon"]);
    let status_quarantined = |ws: &Workspace| {
        let out = ws.run(&["status", "--format", "json"]);
        out.code == 0 && out.json()["quarantine"]["failed_cycles"] == 2
    };
    let quarantined = wait_until(Duration::from_secs(60), || status_quarantined(&ws));
    // Held cycles follow, each skipped by the cycle with its line.
    std::thread::sleep(Duration::from_secs(3));
    daemon.signal("TERM");
    let out = daemon.wait(Duration::from_secs(30));
    assert!(quarantined, "{}", out.dump());
    out.assert_code(0);
    assert!(
        out.stderr.contains("cycles are quarantined until"),
        "{}",
        out.dump()
    );
    // Held cycles record nothing: two failed runs, no more.
    let status = ws
        .run(&["status", "--format", "json"])
        .assert_code(0)
        .json();
    assert_eq!(status["quarantine"]["failed_cycles"], 2, "{status:#}");
    assert_eq!(
        status["runs"].as_array().map(Vec::len),
        Some(3),
        "{status:#}"
    );
}
