//! Scope by assignment (`member_of`) end to end: a CSV source whose groups file
//! decides who is provisioned, against a real scim2-server.

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
    let active = |server: &ScimServer| {
        let mut names: Vec<String> = server
            .users()
            .iter()
            .filter(|u| u["active"].as_bool().unwrap_or(true))
            .filter_map(|u| u["userName"].as_str().map(str::to_lowercase))
            .collect();
        names.sort();
        names
    };
    assert_eq!(active(&server), want);

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
    assert_eq!(active(&server), want);
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
