//! Scope by the enterprise app's assignments (`assign.app`): the stand-in's
//! `/servicePrincipals/{id}/appRoleAssignedTo`, paged, read every cycle
//! beside the delta rounds; assigned users and the direct members of assigned
//! groups are provisioned, assigned groups pushed; a change in Entra is acted
//! on the next cycle; a missing permission is named.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::graph_server::Group;
use crate::support::scim::{ScimServer, str_at};
use crate::support::workdir::Idsync;
use crate::{Setup, directory, gid, uid};

/// The enterprise app's service principal object id.
const APP: &str = "5f6e0000-aaaa-bbbb-cccc-000000000001";

/// userNames of the active users on the target, sorted.
fn active(scim: &ScimServer) -> Vec<String> {
    let mut names: Vec<String> = scim
        .users()
        .iter()
        .filter(|u| u["active"].as_bool() == Some(true))
        .map(|u| str_at(u, "userName").to_string())
        .collect();
    names.sort();
    names
}

fn upns(users: &[usize]) -> Vec<String> {
    let mut names: Vec<String> = users
        .iter()
        .map(|i| format!("user{i}@contoso.com"))
        .collect();
    names.sort();
    names
}

fn groups(scim: &ScimServer) -> BTreeSet<String> {
    scim.contents()
        .groups
        .iter()
        .map(|g| str_at(g, "displayName").to_string())
        .collect()
}

/// Requests for the first page of the app's assignments so far.
fn assignment_reads(s: &Setup) -> usize {
    s.graph
        .log()
        .iter()
        .filter(|(_, p)| p.contains("/appRoleAssignedTo") && !p.contains("$skiptoken"))
        .count()
}

/// 12 users, team-0..2 (user i in team i % 3) nested in `all`, and `lead`
/// holding team-0 (nested) and user 4; the app is assigned team-0, `lead`,
/// user 1, and a daemon app (a service principal).
fn assigned_setup() -> Setup {
    let mut s = Setup::new();
    s.extra_config = format!("assign:\n  app: {APP}\n");
    s.graph.edit(|d| {
        *d = directory(12, 3);
        d.groups.insert(
            gid(500),
            Group {
                name: "lead".into(),
                members: [gid(0), uid(4)].into(),
            },
        );
        for id in [gid(0), gid(500), uid(1), "daemon-app-sp".to_string()] {
            d.assign(APP, &id);
        }
    });
    // Three pages for four assignments.
    s.graph.assignment_pages(2);
    s
}

#[test]
fn the_apps_assigned_users_and_direct_members_of_assigned_groups_are_provisioned_and_changes_follow_next_cycle()
 {
    let s = assigned_setup();
    s.sync_ok();
    // team-0 assigns 0, 3, 6, 9; `lead` assigns its direct member 4 only
    // (team-0 is nested in it, not counted again through it); user 1 directly.
    assert_eq!(active(&s.scim), upns(&[0, 1, 3, 4, 6, 9]));
    assert_eq!(
        groups(&s.scim),
        BTreeSet::from(["team-0".to_string(), "lead".to_string()]),
        "only the assigned groups are pushed"
    );
    let log = s.graph.log();
    assert!(
        log.iter()
            .any(|(_, p)| p.contains("/appRoleAssignedTo") && p.contains("$skiptoken")),
        "the assignments are paged: {log:?}"
    );
    s.assert_plan_empty();

    // In Entra: user 2 is assigned, team-0's assignment is removed.
    s.graph.edit(|d| {
        d.assign(APP, &uid(2));
        d.unassign(APP, &gid(0));
    });
    let reads = assignment_reads(&s);
    let plan = s.run(&["plan"]);
    plan.assert_code(0);
    assert!(
        plan.stdout
            .contains("delete group team-0 (no longer assigned to the app)"),
        "{}",
        plan.dump()
    );
    assert!(
        plan.stdout
            .contains("disable user user0@contoso.com (no longer assigned)"),
        "{}",
        plan.dump()
    );
    s.sync_ok();
    assert!(
        assignment_reads(&s) >= reads + 2,
        "read again by every cycle (there is no delta for assignments)"
    );
    assert_eq!(active(&s.scim), upns(&[1, 2, 4]));
    assert_eq!(groups(&s.scim), BTreeSet::from(["lead".to_string()]));
    assert_eq!(
        s.scim.users().len(),
        7,
        "the unassigned users are kept, disabled"
    );
    s.assert_plan_empty();

    // explain names the assignment.
    let out = s.run(&["explain", "user4@contoso.com"]);
    out.assert_code(0);
    assert!(
        out.stdout
            .contains("Scope: in scope: assigned to the app through group \"lead\""),
        "{}",
        out.dump()
    );
    let out = s.run(&["explain", "user3@contoso.com"]);
    assert!(
        out.stdout.contains(
            "out of scope: not assigned: not assigned to the app, directly or as a direct member of an assigned group"
        ),
        "{}",
        out.dump()
    );
}

#[test]
fn an_app_whose_assignments_are_all_removed_stops_at_the_empty_source_guard() {
    let s = assigned_setup();
    s.sync_ok();
    let before = s.scim.contents().normalized();
    s.graph.edit(|d| d.apps.get_mut(APP).expect("app").clear());
    let out = s.run(&["sync"]);
    out.assert_code(3);
    assert!(
        out.stderr.contains("no users in scope"),
        "the guard, not a mass removal: {}",
        out.dump()
    );
    assert_eq!(s.scim.contents().normalized(), before, "nothing changed");
}

#[test]
fn a_403_on_the_assignments_names_application_read_all_and_a_wrong_id_points_at_assign_app() {
    let mut s = assigned_setup();
    s.graph.forbid("servicePrincipals");
    for command in ["check", "sync"] {
        let out = s.run(&[command]);
        out.assert_code(5);
        assert!(
            out.stderr.contains("Application.Read.All"),
            "{command}: {}",
            out.dump()
        );
    }
    assert!(s.scim.users().is_empty());

    // The app registration's client id instead of the enterprise app's id.
    s.extra_config = "assign:\n  app: 0a1b2c3d-1111-2222-3333-444455556666\n".into();
    s.graph.forbid("nothing");
    let out = s.run(&["sync"]);
    out.assert_code(5);
    assert!(
        out.stderr.contains("HTTP 404") && out.stderr.contains("check `assign.app`"),
        "{}",
        out.dump()
    );
    let check = s.run(&["check"]);
    check.assert_code(5);
    s.extra_config = format!("assign:\n  app: {APP}\n");
    let check = s.run(&["check"]);
    check.assert_code(0);
    assert!(
        check
            .stdout
            .contains(&format!("assignments of enterprise app {APP} readable")),
        "{}",
        check.dump()
    );
    // Two failed cycles in a row quarantined cycles: the fixed config runs
    // when forced, and its success lifts the quarantine.
    s.run(&["sync"]).assert_code(7);
    s.run(&["sync", "--force"]).assert_code(0);
    let _: Value = s.sync_ok();
}
