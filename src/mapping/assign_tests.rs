//! Scope by assignment, through the whole mapping: `assign:` resolved against
//! a read decides which users are in scope and which groups are pushed, with
//! the mapping's own scope rules on top; names the read does not have fail it.

use serde_saphyr::Location;

use super::*;

fn user(key: &str, email: &str, department: &str) -> SourceUser {
    let mut attrs = SourceAttrs::new();
    attrs.push("email", [email]);
    attrs.push("department", [department]);
    SourceUser {
        key: SourceKey::new(key),
        origin: Origin::new(format!("users.csv key {key}")),
        attrs,
    }
}

fn group(key: &str, name: &str, members: &[&str], direct: Option<&[&str]>) -> SourceGroup {
    let keys = |m: &[&str]| m.iter().map(|k| SourceKey::new(*k)).collect::<Vec<_>>();
    SourceGroup {
        direct_members: direct.map(keys),
        dn: Some(format!("cn={name},ou=groups,dc=example,dc=com")),
        ..SourceGroup::new(
            GroupKey::new(key),
            name.into(),
            Origin::new(format!("cn={name}")),
            keys(members),
        )
    }
}

/// u1 is in Engineering directly, u2 and u3 through the nested `team`; u4 is
/// in Ops; u5 (a contractor) in no group.
fn directory() -> SourceDirectory {
    SourceDirectory {
        users: vec![
            user("u1", "ann@example.com", "R&D"),
            user("u2", "bob@example.com", "R&D"),
            user("u3", "cy@example.com", "Contractors"),
            user("u4", "di@example.com", "Ops"),
            user("u5", "ed@example.com", "Contractors"),
        ],
        groups: vec![
            group("g-eng", "Engineering", &["u1", "u2", "u3"], Some(&["u1"])),
            group("g-team", "team", &["u2", "u3"], None),
            group("g-ops", "Ops", &["u4"], None),
        ],
        unresolved_members: 0,
        assignments: None,
    }
}

const MAPPING: &str = r#"
users:
  attributes:
    userName: email
  scope:
    exclude: [ { attribute: department, equals: Contractors } ]
"#;

fn mapping(text: &str, assign: &str, entra: bool) -> Mapping {
    let rules = if entra {
        AssignRules::entra()
    } else {
        AssignRules::flattening("ldap")
    };
    let section: AssignConfig = serde_saphyr::from_str(assign).expect("assign parses");
    let assign = section
        .compile("config.yaml", Location::UNKNOWN, rules)
        .expect("assign compiles");
    Mapping::parse(text, "m.yaml")
        .expect("mapping compiles")
        .with_assign(Some(assign))
}

fn keys(desired: &Desired) -> (Vec<&str>, Vec<&str>) {
    (
        desired.users.iter().map(|u| u.key.as_str()).collect(),
        desired.groups.iter().map(|g| g.key.as_str()).collect(),
    )
}

#[test]
fn assign_makes_users_need_their_groups() {
    assert!(mapping(MAPPING, "groups: [Engineering]\n", false).users_need_groups());
    assert!(mapping(MAPPING, "users: [u4]\n", false).users_need_groups());
}

#[test]
fn members_of_assigned_groups_are_in_scope_and_only_assigned_groups_are_pushed() {
    let m = mapping(MAPPING, "groups: [Engineering]\n", false);
    let desired = m.build(directory()).unwrap();
    // u3 is assigned through the nested team, but the mapping excludes
    // contractors; u4 and u5 are not assigned.
    assert_eq!(keys(&desired), (vec!["u1", "u2"], vec!["g-eng"]));
    let out: Vec<&str> = desired.out_of_scope.iter().map(SourceKey::as_str).collect();
    assert_eq!(out, ["u3", "u4", "u5"]);
    let unassigned: Vec<&str> = desired
        .unassigned_users
        .iter()
        .map(SourceKey::as_str)
        .collect();
    assert_eq!(
        unassigned,
        ["u4", "u5"],
        "u3 is assigned, out by the mapping's rule"
    );
    assert_eq!(
        desired.groups[0].members,
        [SourceKey::new("u1"), SourceKey::new("u2")],
        "an assigned group holds its in-scope members"
    );
    let unassigned: Vec<(&str, &str)> = desired
        .unassigned_groups
        .iter()
        .map(|(k, why)| (k.as_str(), why.as_str()))
        .collect();
    assert_eq!(
        unassigned,
        [
            ("g-ops", "no longer assigned: not in assign.groups"),
            ("g-team", "no longer assigned: not in assign.groups")
        ]
    );
}

#[test]
fn nested_direct_counts_only_the_assigned_groups_own_members() {
    let m = mapping(MAPPING, "groups: [Engineering]\nnested: direct\n", false);
    let desired = m.build(directory()).unwrap();
    assert_eq!(keys(&desired), (vec!["u1"], vec!["g-eng"]));
    // Entra's rule is the default for an Entra source.
    let m = mapping(MAPPING, "groups: [g-eng]\n", true);
    assert_eq!(keys(&m.build(directory()).unwrap()).0, ["u1"]);
}

#[test]
fn users_named_directly_by_key_or_user_name_are_in_scope_without_their_groups() {
    let m = mapping(
        MAPPING,
        "users: [u4, ANN@example.com, ed@example.com]\n",
        false,
    );
    let desired = m.build(directory()).unwrap();
    // u5 is named but is a contractor: the mapping's scope still applies.
    assert_eq!(keys(&desired), (vec!["u1", "u4"], vec![]));
    assert_eq!(desired.unassigned_groups.len(), 3, "no group is assigned");
}

#[test]
fn the_mappings_group_scope_adds_groups_and_its_exclusions_win() {
    let text = format!(
        "{MAPPING}groups:\n  scope:\n    include: [ {{ attribute: name, equals: Ops }} ]\n    exclude: [ {{ attribute: name, equals: team }} ]\n"
    );
    let m = mapping(&text, "groups: [Engineering, team]\n", false);
    let desired = m.build(directory()).unwrap();
    // Ops is pushed by the include rule (u4 is not assigned, so it is empty);
    // team is assigned but excluded: its members are still in scope.
    assert_eq!(keys(&desired), (vec!["u1", "u2"], vec!["g-eng", "g-ops"]));
    assert!(desired.groups[1].members.is_empty());
    assert!(
        desired.unassigned_groups.is_empty(),
        "an excluded group is out of scope, not unassigned"
    );
}

#[test]
fn an_assigned_group_the_read_does_not_have_fails_it() {
    let m = mapping(MAPPING, "groups: [Engineering, Platform]\n", false);
    let errors = m.build(directory()).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].problem, RecordProblem::UnknownAssignedGroup);
    let text = errors[0].to_string();
    assert!(
        text.starts_with("config.yaml: group \"Platform\": `assign.groups` names this group"),
        "{text}"
    );
    assert!(text.contains("correct `assign.groups`"), "{text}");
}

#[test]
fn an_assigned_user_the_read_does_not_have_is_left_out_and_the_others_go_on() {
    // Zoe left the directory but is still listed: the cycle goes on for
    // everyone else (a warning says to take her out of `assign.users`).
    let m = mapping(MAPPING, "users: [u1, zoe@example.com]\n", false);
    let desired = m.build(directory()).expect("not an error");
    let keys: Vec<&str> = desired.users.iter().map(|u| u.key.as_str()).collect();
    assert_eq!(keys, ["u1"], "{keys:?}");
}

#[test]
fn the_sources_own_assignments_scope_direct_members_and_push_their_groups() {
    let m = mapping(MAPPING, "app: 5f6e0000-0000-0000-0000-000000000001\n", true);
    let mut dir = directory();
    dir.assignments = Some(SourceAssignments {
        from: "the app".into(),
        users: vec![SourceKey::new("u4")],
        groups: vec![GroupKey::new("g-eng")],
    });
    let desired = m.build(dir.clone()).unwrap();
    // Engineering assigns u1 (its direct member), not the nested team's.
    assert_eq!(keys(&desired), (vec!["u1", "u4"], vec!["g-eng"]));
    assert_eq!(
        desired.unassigned_groups[&GroupKey::new("g-ops")],
        "no longer assigned to the app"
    );
    let unassigned: Vec<&str> = desired
        .unassigned_users
        .iter()
        .map(SourceKey::as_str)
        .collect();
    assert_eq!(unassigned, ["u2", "u3", "u5"], "u3 is also a contractor");
    // Everything unassigned in the app: nobody is in scope (the planner's
    // guards decide what that may remove).
    dir.assignments = Some(SourceAssignments::default());
    let desired = m.build(dir).unwrap();
    assert_eq!(keys(&desired), (vec![], vec![]));
}

#[test]
fn member_of_clauses_and_assign_both_hold() {
    let text = "users:\n  attributes: { userName: email }\n  scope:\n    include: [ { member_of: [team] } ]\n";
    let m = mapping(text, "groups: [Engineering]\nnested: direct\n", false);
    // Assigned: u1 only (direct); member_of team: u2, u3. Nobody is both.
    assert!(m.build(directory()).unwrap().users.is_empty());
    let m = mapping(text, "groups: [Engineering]\n", false);
    assert_eq!(keys(&m.build(directory()).unwrap()).0, ["u2", "u3"]);
}

#[test]
fn the_verdict_names_the_assignment_that_decided() {
    let m = mapping(
        MAPPING,
        "groups: [Engineering]\nusers: [di@example.com, u5]\n",
        false,
    );
    let dir = directory();
    let verdict = |key: &str| {
        let user = dir.users.iter().find(|u| u.key.as_str() == key).unwrap();
        m.scope_verdict(user, &dir)
    };
    assert_eq!(
        verdict("u1"),
        "in scope: assigned through group \"Engineering\"; none of the 1 exclude rule(s) matches"
    );
    assert_eq!(
        verdict("u2"),
        "in scope: assigned through group \"Engineering\" (through a nested group); none of the 1 exclude rule(s) matches"
    );
    assert_eq!(
        verdict("u4"),
        "in scope: assigned directly (assign.users); none of the 1 exclude rule(s) matches"
    );
    assert_eq!(
        verdict("u5"),
        "out of scope: assigned directly (assign.users), but exclude rule 1 matches"
    );
    let m = mapping(MAPPING, "groups: [Engineering]\n", false);
    let user = &dir.users[3];
    assert_eq!(
        m.scope_verdict(user, &dir),
        "out of scope: not assigned: not a member of an assigned group, nested groups included"
    );
    let m = mapping(MAPPING, "groups: [Nope]\n", false);
    assert_eq!(
        m.scope_verdict(user, &dir),
        "unknown: `assign.groups` names a group the source does not have (group \"Nope\")"
    );
}

#[test]
fn a_streamed_read_finds_named_users_across_the_whole_read() {
    let m = mapping(MAPPING, "users: [u5, u1]\n", false);
    let dir = directory();
    let mut mapper = m.user_mapper(&dir.groups, None, 0).unwrap();
    for user in dir.users.iter().cloned() {
        mapper.push(user);
    }
    let desired = m
        .build_groups(mapper.finish(), dir.groups.clone(), 0)
        .unwrap();
    assert_eq!(keys(&desired).0, ["u1"]);
    assert!(desired.warnings.is_empty(), "{:?}", desired.warnings);
    // The same users, but u1 missing from this read: named and absent, so
    // nobody is assigned (a warning), and the read is not an error.
    let mut mapper = m.user_mapper(&dir.groups, None, 0).unwrap();
    for user in dir.users.iter().skip(1).cloned() {
        mapper.push(user);
    }
    let desired = m.build_groups(mapper.finish(), dir.groups, 0).unwrap();
    assert!(keys(&desired).0.is_empty(), "{:?}", keys(&desired).0);
    assert_eq!(desired.warnings.len(), 1, "{:?}", desired.warnings);
    assert!(
        desired.warnings[0].contains("`assign.users` names \"u1\", which the source does not have"),
        "{}",
        desired.warnings[0]
    );
}

/// What the engine builds from `dir` when the source names each user's groups
/// as it arrives (LDAP): the mapper sees the groups with empty member lists,
/// each user with the positions of its groups, and the member lists only
/// come for `build_groups`.
fn built_as_streamed(m: &Mapping, dir: SourceDirectory) -> Desired {
    let positions = |of: &dyn Fn(&SourceGroup) -> &[SourceKey], key: &SourceKey| {
        let groups = dir.groups.iter().enumerate();
        groups
            .filter(|(_, g)| of(g).contains(key))
            .map(|(i, _)| i)
            .collect::<Vec<usize>>()
    };
    let empty: Vec<SourceGroup> = dir
        .groups
        .iter()
        .map(|g| SourceGroup {
            members: Vec::new(),
            direct_members: g.direct_members.as_ref().map(|_| Vec::new()),
            ..g.clone()
        })
        .collect();
    let mut mapper = m.user_mapper(&empty, None, 0).unwrap();
    for user in dir.users {
        let all = positions(&|g| &g.members, &user.key);
        let direct = positions(&|g| g.direct(), &user.key);
        let groups = crate::model::GroupsOf {
            all: &all[..],
            direct: &direct[..],
        };
        mapper.push_in(user, groups);
    }
    let mapped = mapper.finish();
    m.build_groups(mapped, dir.groups, 0).unwrap()
}

#[test]
fn users_that_name_their_groups_as_they_arrive_are_scoped_as_when_groups_list_them() {
    let member_of = r#"
users:
  attributes:
    userName: email
  scope:
    include: [ { member_of: [team, Ops] } ]
    exclude: [ { attribute: department, equals: Contractors } ]
"#;
    let cases = [
        mapping(MAPPING, "groups: [Engineering]\n", false),
        mapping(MAPPING, "groups: [Engineering]\nnested: direct\n", false),
        mapping(MAPPING, "groups: [Ops]\nusers: [u5]\n", false),
        Mapping::parse(member_of, "m.yaml").expect("mapping compiles"),
    ];
    for (i, m) in cases.iter().enumerate() {
        let whole = m.build(directory()).unwrap();
        let streamed = built_as_streamed(m, directory());
        assert_eq!(streamed.users, whole.users, "case {i}");
        assert_eq!(streamed.groups, whole.groups, "case {i}");
        assert_eq!(streamed.out_of_scope, whole.out_of_scope, "case {i}");
        assert_eq!(
            streamed.unassigned_users, whole.unassigned_users,
            "case {i}"
        );
        assert!(!whole.users.is_empty() && !whole.out_of_scope.is_empty());
    }
    // The cases differ: the rules decide, not the path.
    let users = |m: &Mapping| keys(&built_as_streamed(m, directory())).0.join(",");
    assert_eq!(users(&cases[0]), "u1,u2");
    assert_eq!(users(&cases[1]), "u1");
    assert_eq!(users(&cases[2]), "u4", "u5 is named, but a contractor");
    assert_eq!(users(&cases[3]), "u2,u4");
}
