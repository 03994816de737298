//! Scope by assignment end to end: a CSV source whose groups file decides
//! who is provisioned, through the config's `assign:` section and through
//! `member_of` scope clauses (the same concept), against a real scim2-server.

use crate::harness::*;

/// A copy of the default CSV mapping whose users are those assigned to `group`.
fn assigned_mapping(ws: &Workspace, group: &str) -> std::path::PathBuf {
    let default = std::fs::read_to_string(Workspace::mapping_path()).expect("default mapping");
    let scoped = default.replace(
        "  required: [userName, emails]\n",
        &format!(
            "  required: [userName, emails]\n  scope:\n    include: [ {{ member_of: [\"{group}\"] }} ]\n"
        ),
    );
    assert_ne!(scoped, default, "the default mapping changed shape");
    let path = ws.path().join("assigned.yaml");
    std::fs::write(&path, scoped).expect("write mapping");
    path
}

fn use_mapping(ws: &mut Workspace, mapping: &std::path::Path) {
    let config = ws.config_text().replace(
        &Workspace::mapping_path().display().to_string(),
        &mapping.display().to_string(),
    );
    ws.raw_config = Some(config);
    ws.write_config();
}

#[test]
fn only_users_assigned_to_the_group_are_provisioned_and_unassigned_ones_leave() {
    let server = ScimServer::start(&fresh_token("assign"));
    let mut ws = Workspace::new(&server);
    let dir = Directory::generate(12, 3);
    let (group, members) = dir
        .groups
        .iter()
        .find(|(_, m)| m.len() >= 2)
        .map(|(g, m)| (g.clone(), m.clone()))
        .expect("a group with members");
    ws.write_directory(&dir);
    let mapping = assigned_mapping(&ws, &group.to_uppercase());
    use_mapping(&mut ws, &mapping);

    ws.sync_ok();
    let email_of = |id: &str| {
        dir.users
            .iter()
            .find(|u| u.id == id)
            .map(|u| u.email.trim().to_lowercase())
            .expect("member is a user")
    };
    // Inactive rows are never created; everyone else assigned is.
    let active_member = |id: &String| dir.users.iter().any(|u| u.id == *id && u.active);
    let mut want: Vec<String> = members
        .iter()
        .filter(|m| active_member(m))
        .map(|m| email_of(m))
        .collect();
    want.sort();
    assert_eq!(active_names(&server), want);

    // Unassign one member: they leave scope and are disabled.
    let mut dir2 = dir.clone();
    let leaver = members
        .iter()
        .find(|m| active_member(m))
        .expect("an active member")
        .clone();
    dir2.groups
        .get_mut(&group)
        .expect("group")
        .retain(|m| *m != leaver);
    ws.write_directory(&dir2);
    ws.sync_ok();
    want.retain(|e| *e != email_of(&leaver));
    assert_eq!(active_names(&server), want);
    ws.assert_plan_empty();
}

#[test]
fn a_missing_assignment_group_fails_the_read_and_changes_nothing() {
    let (server, mut ws, _dir) = synced(6, 2);
    let before = server.contents();
    let mapping = assigned_mapping(&ws, "No Such Group");
    use_mapping(&mut ws, &mapping);
    let out = ws.run(&["sync"]);
    out.assert_code(2);
    assert!(
        out.stderr.contains("member_of") && out.stderr.contains("No Such Group"),
        "{}",
        out.dump()
    );
    assert_eq!(server.contents().normalized(), before.normalized());
}

/// The userNames of the target's active users, lower-cased and sorted.
fn active_names(server: &ScimServer) -> Vec<String> {
    let mut names: Vec<String> = server
        .users()
        .iter()
        .filter(|u| u["active"].as_bool().unwrap_or(true))
        .filter_map(|u| u["userName"].as_str().map(str::to_lowercase))
        .collect();
    names.sort();
    names
}

/// The userNames (lower-cased, sorted) of the active users among `keys`.
fn names_of(dir: &Directory, keys: &[&String]) -> Vec<String> {
    let mut names: Vec<String> = dir
        .users
        .iter()
        .filter(|u| u.active && keys.contains(&&u.id))
        .map(|u| u.user_name().to_lowercase())
        .collect();
    names.sort();
    names.dedup();
    names
}

fn group_names(server: &ScimServer) -> Vec<String> {
    let mut names: Vec<String> = server
        .contents()
        .groups
        .iter()
        .map(|g| str_at(g, "displayName").to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn assigned_groups_and_a_user_named_directly_are_provisioned_and_only_assigned_groups_pushed() {
    let server = ScimServer::start(&fresh_token("assign-groups"));
    let mut ws = Workspace::new(&server);
    let dir = Directory::generate(12, 3);
    ws.write_directory(&dir);
    let members = &dir.groups["group-01"];
    let outsider = dir
        .users
        .iter()
        .find(|u| u.active && !members.contains(&u.id))
        .expect("an active user outside group-01");
    // The group by name in another case, the user by userName in another case.
    ws.extra_config = format!(
        "assign:\n  groups: [GROUP-01]\n  users: [\"{}\"]\n",
        outsider.user_name().to_uppercase()
    );
    ws.sync_ok();

    let mut want: Vec<&String> = members.iter().collect();
    want.push(&outsider.id);
    assert_eq!(active_names(&server), names_of(&dir, &want));
    assert_eq!(
        group_names(&server),
        ["group-01"],
        "only the assigned group"
    );
    let contents = server.contents();
    let group = &contents.groups[0];
    assert_eq!(
        member_ids(group).len(),
        names_of(&dir, &members.iter().collect::<Vec<_>>()).len(),
        "the group holds its active members, not the user named directly"
    );
    ws.assert_plan_empty();
}

/// Assigns group-01 and group-02, syncs, then leaves group-02 out.
fn unassign_a_group(remove_action: &str) -> (ScimServer, Workspace, Directory, Vec<String>) {
    let server = ScimServer::start(&fresh_token("assign-leave"));
    let mut ws = Workspace::new(&server);
    ws.remove_action = remove_action.into();
    let dir = Directory::generate(12, 3);
    ws.write_directory(&dir);
    ws.extra_config = "assign: { groups: [group-01, group-02] }\n".into();
    ws.sync_ok();
    assert_eq!(group_names(&server), ["group-01", "group-02"]);
    let only_in_02: Vec<String> = dir.groups["group-02"]
        .iter()
        .filter(|k| !dir.groups["group-01"].contains(k))
        .cloned()
        .collect();
    assert!(!only_in_02.is_empty(), "the generator changed shape");

    ws.extra_config = "assign: { groups: [group-01] }\n".into();
    let plan = ws.run(&["plan"]);
    plan.assert_code(0);
    assert!(
        plan.stdout
            .contains("no longer assigned: not in assign.groups"),
        "the plan says why group-02 goes:\n{}",
        plan.dump()
    );
    ws.sync_ok();
    (server, ws, dir, only_in_02)
}

#[test]
fn unassigned_users_are_disabled_and_a_group_leaving_scope_is_deleted() {
    let (server, ws, dir, only_in_02) = unassign_a_group("disable");
    assert_eq!(
        group_names(&server),
        ["group-01"],
        "groups.delete removed it"
    );
    let want = names_of(&dir, &dir.groups["group-01"].iter().collect::<Vec<_>>());
    assert_eq!(active_names(&server), want);
    let contents = server.contents();
    for key in &only_in_02 {
        let name = dir.user(key).user_name();
        let found = contents.users_named(&name);
        assert_eq!(found.len(), 1, "{name} is kept, disabled");
        assert_eq!(found[0]["active"].as_bool(), Some(false), "{name}");
    }
    ws.assert_plan_empty();
}

#[test]
fn unassigned_users_are_deleted_under_remove_action_delete() {
    let (server, ws, dir, only_in_02) = unassign_a_group("delete");
    for key in &only_in_02 {
        let name = dir.user(key).user_name();
        assert!(
            server.contents().users_named(&name).is_empty(),
            "{name} is deleted"
        );
    }
    assert_eq!(server.users().len(), active_names(&server).len());
    ws.assert_plan_empty();
}

#[test]
fn an_assigned_user_who_left_the_source_is_removed_and_the_cycle_goes_on() {
    let (server, mut ws, mut dir) = synced(6, 2);
    ws.extra_config = "assign: { users: [u0001, u0002] }\n".into();
    ws.max_removals = "10".into();
    ws.sync_ok();
    let leaver = dir.user("u0002").user_name();
    // u0002 leaves the directory; the config still names them.
    dir.remove_user("u0002");
    ws.write_directory(&dir);
    // The plan shows the entry before anything is applied, in its text and
    // in its JSON (which a pull-request comment is made from).
    let named = "`assign.users` names \"u0002\", which the source does not have";
    let out = ws.run(&["plan"]);
    out.assert_code(0);
    assert!(
        out.stdout.contains("warning:") && out.stdout.contains(named),
        "{}",
        out.dump()
    );
    let out = ws.run(&["plan", "--format", "json"]);
    out.assert_code(0);
    let plan: serde_json::Value = serde_json::from_str(&out.stdout).expect("plan JSON");
    let warned = |v: &serde_json::Value| {
        v["warnings"].as_array().is_some_and(|w| {
            w.iter()
                .any(|w| w.as_str().is_some_and(|w| w.contains(named)))
        })
    };
    assert!(warned(&plan), "{}", out.dump());
    // `audit` reads the same source through the same mapping.
    let out = ws.run(&["audit"]);
    assert!(out.stderr.contains(named), "{}", out.dump());
    let out = ws.run(&["sync", "--format", "json"]);
    out.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&out.stdout).expect("summary JSON");
    assert!(warned(&summary), "{}", out.dump());
    assert!(
        out.stderr
            .contains("`assign.users` names \"u0002\", which the source does not have")
            && out.stderr.contains("take the entry out of `assign.users`"),
        "{}",
        out.dump()
    );
    let users = server.users();
    let account = users
        .iter()
        .find(|u| u["userName"] == leaver.as_str())
        .expect("the leaver's account is kept, disabled");
    assert_eq!(account["active"], false, "{account}");
    let kept = dir.user("u0001").user_name();
    assert!(
        users
            .iter()
            .any(|u| u["userName"] == kept.as_str() && u["active"] == true),
        "u0001 stays"
    );
}

#[test]
fn an_assigned_group_the_source_does_not_have_exits_2_and_changes_nothing() {
    let (server, mut ws, _dir) = synced(6, 2);
    let before = server.contents();
    ws.extra_config = "assign: { groups: [group-01, Platform Team] }\n".into();
    let out = ws.run(&["sync"]);
    out.assert_code(2);
    assert!(
        out.stderr.contains("Platform Team") && out.stderr.contains("assign.groups"),
        "{}",
        out.dump()
    );
    assert!(out.stderr.contains("nothing was planned"), "{}", out.dump());
    assert_eq!(server.contents().normalized(), before.normalized());
}
