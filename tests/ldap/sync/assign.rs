//! `assign:` against a real slapd: an assigned group (named by its DN in
//! another spelling, or by name) decides who is provisioned and is the only
//! group pushed; nested groups are flattened by default (LDAP's rule) and
//! `nested: direct` counts a group's own members only.

use std::collections::BTreeSet;

use super::*;

/// `want` narrowed to the users of `assigned` (keys) and the one pushed
/// group `group`, whose members are the assigned users it reaches.
fn narrowed(want: &Want, group: &str, assigned: &BTreeSet<String>) -> Want {
    let mut w = want.clone();
    w.users.retain(|key, _| assigned.contains(key));
    w.groups.retain(|_, g| g.name == group);
    for g in w.groups.values_mut() {
        g.members.retain(|key| assigned.contains(key));
    }
    w
}

/// The target holds exactly the `assigned` users of `want` (and `disabled`
/// ones, deactivated) and the one pushed group `group`.
fn assert_assigned(
    server: &ScimServer,
    want: &Want,
    group: &str,
    assigned: &BTreeSet<String>,
    disabled: &BTreeSet<String>,
) {
    assert_target(
        &narrowed(want, group, assigned),
        disabled,
        &server.contents(),
    );
}

/// `plan` exits 0 and its text holds `says`.
fn assert_plan_says(op: &Operator, says: &str) {
    let plan = op.run(&["plan"]);
    plan.assert_code(0);
    assert!(plan.stdout.contains(says), "{says}: {}", plan.dump());
}

#[test]
fn an_assigned_group_scopes_users_flattening_nested_groups_unless_direct() {
    let n = 40;
    let slapd = Slapd::start(&directory(n));
    let server = ScimServer::start(&fresh_token("ldap-assign"));
    let mut op = Operator::new(&slapd, &server);
    let want = expected(&read_as_admin(&slapd));
    let engineering = want_group(&want, "engineering").members.clone();
    let all_staff = want_group(&want, "all-staff").members.clone();
    assert!(engineering.len() > 5 && all_staff.len() > engineering.len());

    // Flattened (the default): team-01's and team-02's members and user 3.
    op.extra_config = format!(
        "assign:\n  groups: [\"CN=Engineering, {}\"]\n",
        GROUPS.to_uppercase()
    );
    op.sync_ok();
    let mut disabled = BTreeSet::new();
    assert_assigned(&server, &want, "engineering", &engineering, &disabled);
    op.assert_plan_empty();

    // Direct: only the user engineering lists itself; the teams' members go.
    op.extra_config = "assign:\n  groups: [engineering]\n  nested: direct\n".into();
    assert_plan_says(&op, "(no longer assigned)");
    // More than max_removals (5%) leave: the guard holds them until reviewed.
    op.run(&["sync"]).assert_code(3);
    op.run(&["sync", "--allow-deletes"]).assert_code(0);
    let direct = BTreeSet::from([user_key(&want, 3)]);
    disabled.extend(engineering.difference(&direct).cloned());
    assert_assigned(&server, &want, "engineering", &direct, &disabled);
    op.assert_plan_empty();

    // all-staff, flattened two levels down: everyone comes back, user 4 too;
    // engineering is no longer assigned and is deleted (groups.delete on).
    op.extra_config = "assign: { groups: [all-staff] }\n".into();
    assert_plan_says(
        &op,
        "delete group engineering (no longer assigned: not in assign.groups)",
    );
    // A group delete is a removal too (above 5% of the few managed users).
    op.run(&["sync", "--allow-deletes"]).assert_code(0);
    assert_assigned(&server, &want, "all-staff", &all_staff, &BTreeSet::new());
    op.assert_plan_empty();
}
