//! Removals idsync must not lose or make by mistake: a `--full` listing that
//! under-reports (a leaver hidden from it, or everyone), a target that refuses
//! one attribute for every user (the failure budget must not starve the
//! disables), and a groups file whose member column went blank (emptying
//! groups is a removal, and guarded like one).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::faults::{assert_no_duplicates, rig};
use crate::harness::{
    Idsync, ScimServer, Workspace, assert_target_matches, fresh_token, ops_of, str_at,
    summary_count,
};
use crate::proxy::{Fault, Schedule};

/// The user who leaves in these tests.
const LEAVER: &str = "u0020";

#[test]
fn full_sync_confirms_a_leaver_the_listing_hides_and_still_disables_them() {
    let rig = rig("hide-leaver", 30, 3, crate::proxy::pass_through());
    rig.ws.sync_ok();
    let mut dir = rig.dir.clone();
    let leaver = dir.remove_user(LEAVER);
    rig.ws.write_directory(&dir);
    let leaver_id = rig.server.contents().user_id(&leaver.user_name());
    let hidden = leaver.user_name();
    let schedule: Schedule = Arc::new(move |r| {
        if r.is_listing("Users") {
            Fault::HideFromListing(vec![hidden.clone()])
        } else {
            Fault::Forward
        }
    });
    rig.proxy.set_schedule(schedule);

    let out = rig.ws.run(&["sync", "--full", "--format", "json"]);
    out.assert_code(0);
    let summary = out.json();
    assert_eq!(summary_count(&summary, "disable_users"), 1, "{summary:#}");
    assert_eq!(summary_count(&summary, "create_users"), 0, "{summary:#}");
    assert!(
        rig.proxy.count_fault("hide-from-listing") >= 1,
        "{}",
        rig.proxy.summary()
    );
    let looked_up = rig
        .proxy
        .entries()
        .iter()
        .filter(|e| e.method == "GET" && e.path.ends_with(&format!("/Users/{leaver_id}")))
        .count();
    assert_eq!(looked_up, 1, "{}", rig.proxy.summary());

    // The leaver is disabled in the target, and nobody was duplicated.
    let contents = rig.server.contents();
    assert_no_duplicates(&contents);
    assert_target_matches(&dir, std::slice::from_ref(&leaver), &contents);
    // No removal was missed: nothing left to do, with or without --full.
    rig.ws.assert_plan_empty();
    let full = rig
        .ws
        .run(&["plan", "--full", "--format", "json"])
        .assert_code(0)
        .json();
    assert!(ops_of(&full, "disable_user").is_empty(), "{full:#}");
}

#[test]
fn full_sync_refuses_a_listing_that_shows_nobody_and_changes_nothing() {
    let rig = rig("hide-all", 30, 3, crate::proxy::pass_through());
    rig.ws.sync_ok();
    let mut dir = rig.dir.clone();
    let leaver = dir.remove_user(LEAVER);
    rig.ws.write_directory(&dir);
    rig.proxy.set_schedule(Arc::new(|r| {
        if r.is_listing("Users") {
            Fault::HideAllFromListing
        } else {
            Fault::Forward
        }
    }));
    rig.proxy.clear_log();

    let out = rig.ws.run(&["sync", "--full", "--format", "json"]);
    out.assert_code(5);
    assert!(
        out.stderr.contains("listing of /Users holds 0 of the"),
        "{}",
        out.dump()
    );
    assert_eq!(rig.proxy.writes(), 0, "{}", rig.proxy.summary());
    assert!(
        rig.server.contents().user(&leaver.user_name())["active"] == true,
        "the leaver was changed"
    );

    // The state still has the leaver: the normal path disables them, guarded.
    rig.proxy.set_schedule(crate::proxy::pass_through());
    let plan = rig.ws.plan_json();
    let disables = ops_of(&plan, "disable_user");
    assert_eq!(disables.len(), 1, "{plan:#}");
    assert_eq!(str_at(&disables[0], "key"), LEAVER);
    assert!(ops_of(&plan, "create_user").is_empty(), "{plan:#}");
    rig.ws.sync_ok();
    assert_target_matches(&dir, &[leaver], &rig.server.contents());
}

#[test]
fn full_sync_confirms_a_group_the_listing_hides_instead_of_recreating_it() {
    let rig = rig("hide-group", 30, 3, crate::proxy::pass_through());
    rig.ws.sync_ok();
    rig.proxy.set_schedule(Arc::new(|r| {
        if r.is_listing("Groups") {
            Fault::HideFromListing(vec!["\"group-01\"".into()])
        } else {
            Fault::Forward
        }
    }));
    rig.proxy.clear_log();
    let out = rig.ws.run(&["sync", "--full", "--format", "json"]);
    out.assert_code(0);
    let summary = out.json();
    assert_eq!(summary_count(&summary, "create_groups"), 0, "{summary:#}");
    assert_eq!(summary_count(&summary, "add_members"), 0, "{summary:#}");
    assert_eq!(rig.proxy.writes(), 0, "{}", rig.proxy.summary());
    assert_target_matches(&rig.dir, &[], &rig.server.contents());
}

#[test]
fn a_refused_attribute_does_not_starve_the_leavers_disable() {
    const DETAIL: &str = "title is not accepted by this directory (proxy)";
    let refuse = Arc::new(AtomicBool::new(false));
    let schedule: Schedule = {
        let refuse = Arc::clone(&refuse);
        Arc::new(move |r| {
            let writes_title =
                (r.method == "PATCH" || r.method == "POST") && r.body.contains("title");
            if refuse.load(Ordering::SeqCst) && writes_title {
                Fault::Status(400, DETAIL.into())
            } else {
                Fault::Forward
            }
        })
    };
    let rig = rig("refused-title", 40, 2, schedule);
    rig.ws.sync_ok();
    // Every title changes (each update is refused), and one person leaves.
    let mut dir = rig.dir.clone();
    for u in &mut dir.users {
        u.title = format!("{} (new)", u.title);
    }
    let leaver = dir.remove_user(LEAVER);
    rig.ws.write_directory(&dir);
    refuse.store(true, Ordering::SeqCst);

    let out = rig.ws.run(&["sync", "--format", "json"]);
    out.assert_code(1);
    let summary = out.json();
    assert!(summary["stopped"].is_null(), "{summary:#}");
    let updates = summary_count(&summary, "update_users");
    assert!(updates > 20, "too few refused updates to test: {summary:#}");
    let failures = summary["failures"].as_array().cloned().unwrap_or_default();
    assert_eq!(failures.len() as u64, updates, "{summary:#}");
    assert!(
        failures
            .iter()
            .all(|f| f["op"] == "update_user" && f["http_status"] == 400),
        "{summary:#}"
    );
    // The leaver lost access in this very cycle.
    let contents = rig.server.contents();
    assert_eq!(
        contents.user(&leaver.user_name())["active"],
        false,
        "the leaver is still active: {}",
        rig.proxy.summary()
    );
}

#[test]
fn emptying_every_group_is_held_by_the_member_removal_limit() {
    let server = ScimServer::start(&fresh_token("empty-groups"));
    let mut ws = Workspace::new(&server);
    // The default limit (10% of managed memberships).
    ws.max_member_removals = None;
    let dir = crate::harness::Directory::generate(40, 4);
    ws.write_directory(&dir);
    ws.sync_ok();
    let before = server.contents().normalized();
    // Every member cell blank: each group stays, with nobody in it.
    let mut emptied = dir.clone();
    for members in emptied.groups.values_mut() {
        members.clear();
    }
    ws.write_directory(&emptied);

    let out = ws.run(&["sync", "--format", "json"]);
    out.assert_code(3);
    assert!(
        out.stderr.contains("group memberships") && out.stderr.contains("max_member_removals 10%"),
        "{}",
        out.dump()
    );
    assert!(out.stderr.contains("from group group-01"), "{}", out.dump());
    assert_eq!(
        server.contents().normalized(),
        before,
        "the guard let something through"
    );
    // `plan` shows what the guard would stop, and exits 0.
    let plan = ws.run(&["plan"]);
    plan.assert_code(0);
    assert!(
        plan.stderr.contains("max_member_removals"),
        "{}",
        plan.dump()
    );

    // Reviewed: --allow-deletes lets it through.
    let out = ws.run(&["sync", "--allow-deletes", "--format", "json"]);
    out.assert_code(0);
    assert_target_matches(&emptied, &[], &server.contents());
    ws.assert_plan_empty();
}
