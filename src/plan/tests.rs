//! Planner tests: table tests per behaviour, properties of plans, and golden
//! snapshots of the rendered plan.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::testkit::*;
use super::{
    Action, Actions, DisabledAction, OnRename, Operation, PlanningInput, Policy, RemovalLimit,
    RemoveAction, guard,
};
use crate::model::{
    AttrHash, GroupKey, RemoteGroup, RemoteMember, RemoteUser, ScimId, SourceKey, State,
    StateChange, Status, TargetSnapshot, UserAttr, UserName,
};
use crate::report::{MEMBERS_LISTED, PlanView, Style, plan_text, write_plan_json};

#[test]
fn new_users_are_created_and_unchanged_ones_left_alone() {
    let (a, b) = (person("1", "a@x.com", "Eng"), person("2", "b@x.com", "Eng"));
    let state = state_of(&[(&a, Status::Active)]);
    let plan = plan(&desired(vec![a, b], vec![]), &state, &Policy::default());
    assert_eq!(names(&plan), ["create_user 2"]);
    assert_eq!(plan.summary.create_users, 1);
}

#[test]
fn an_update_patches_only_what_changed() {
    let a = person("1", "a@x.com", "Eng");
    let state = state_of(&[(&a, Status::Active)]);
    let mut a2 = a.clone();
    a2.attrs.insert(UserAttr::Title, "Lead");
    let plan = plan(&desired(vec![a2], vec![]), &state, &Policy::default());
    let Operation::UpdateUser {
        changes, scim_id, ..
    } = &plan.operations[0]
    else {
        panic!("{plan:?}")
    };
    assert_eq!(scim_id.as_str(), "id-1");
    assert_eq!(changes.keys().collect::<Vec<_>>(), [&UserAttr::Title]);
    assert_eq!(changes[&UserAttr::Title].old.as_deref(), Some("Eng"));
}

#[test]
fn an_email_change_is_an_update_of_the_same_id_not_a_delete_and_create() {
    let a = person("1", "a@x.com", "Eng");
    let state = state_of(&[(&a, Status::Active)]);
    let mut a2 = a.clone();
    a2.attrs.insert(UserAttr::UserName, "a.new@x.com");
    a2.attrs.insert(UserAttr::Email, "a.new@x.com");
    let plan = plan(&desired(vec![a2], vec![]), &state, &Policy::default());
    assert_eq!(names(&plan), ["update_user 1"]);
    assert_eq!(plan.summary.removals(), 0);
}

#[test]
fn leavers_follow_remove_action() {
    let (a, b) = (person("1", "a@x.com", "Eng"), person("2", "b@x.com", "Eng"));
    let state = state_of(&[(&a, Status::Active), (&b, Status::Active)]);
    let d = desired(vec![a.clone()], vec![]);
    let disable = plan(&d, &state, &Policy::default());
    assert_eq!(names(&disable), ["disable_user 2"]);
    let policy = Policy {
        remove_action: RemoveAction::Delete,
        ..Policy::default()
    };
    assert_eq!(names(&plan(&d, &state, &policy)), ["delete_user 2"]);
}

#[test]
fn a_disabled_user_who_returns_is_enabled_with_the_same_id() {
    let a = person("1", "a@x.com", "Eng");
    let state = state_of(&[(&a, Status::Disabled)]);
    let plan = plan(&desired(vec![a], vec![]), &state, &Policy::default());
    assert!(
        matches!(&plan.operations[..], [Operation::EnableUser { scim_id, changes, .. }]
        if scim_id.as_str() == "id-1" && changes.is_empty())
    );
}

#[test]
fn a_deleted_user_who_returns_is_created_again() {
    let a = person("1", "a@x.com", "Eng");
    let state = state_of(&[(&a, Status::Removed)]);
    assert_eq!(
        names(&plan(&desired(vec![a], vec![]), &state, &Policy::default())),
        ["create_user 1"]
    );
}

#[test]
fn inactive_users_are_disabled_but_never_created() {
    let mut a = person("1", "a@x.com", "Eng");
    let mut b = person("2", "b@x.com", "Eng");
    let state = state_of(&[(&a, Status::Active)]);
    a.active = false;
    b.active = false;
    let plan = plan(&desired(vec![a, b], vec![]), &state, &Policy::default());
    assert_eq!(names(&plan), ["disable_user 1"]);
}

#[test]
fn group_members_are_the_users_the_target_will_hold_whether_or_not_all_of_them_are() {
    let (a, b) = (person("1", "a@x.com", "Eng"), person("2", "b@x.com", "Eng"));
    let members = |plan: &crate::plan::Plan| -> Vec<String> {
        plan.operations
            .iter()
            .filter_map(|op| match op {
                Operation::AddMembers { members, .. } => Some(members),
                _ => None,
            })
            .flatten()
            .map(|m| m.as_str().to_string())
            .collect()
    };
    // Every desired user will be held: every member is added.
    let everyone = desired(
        vec![a.clone(), b.clone()],
        vec![group("g", "G", &["1", "2"])],
    );
    let plan1 = plan(&everyone, &State::default(), &Policy::default());
    assert_eq!(members(&plan1), ["1", "2"]);
    // A new user inactive in the source is never created, so not added either.
    let mut inactive = b.clone();
    inactive.active = false;
    let some = desired(vec![a, inactive], vec![group("g", "G", &["1", "2"])]);
    let plan2 = plan(&some, &State::default(), &Policy::default());
    assert_eq!(members(&plan2), ["1"]);
}

#[test]
fn create_only_attributes_are_not_updated() {
    let a = person("1", "a@x.com", "Eng");
    let mut d = desired(vec![a.clone()], vec![]);
    d.create_only.insert(UserAttr::Title);
    let mut state = state_of(&[(&a, Status::Active)]);
    state.users.get_mut(&a.key).unwrap().hash = AttrHash::of(&a.attrs, &d.create_only);
    d.users[0].attrs.insert(UserAttr::Title, "Changed");
    assert!(plan(&d, &state, &Policy::default()).is_empty());
}

#[test]
fn out_of_scope_users_can_be_left_alone() {
    let (a, b) = (person("1", "a@x.com", "Eng"), person("2", "b@x.com", "Eng"));
    let state = state_of(&[(&a, Status::Active), (&b, Status::Active)]);
    let mut d = desired(vec![a], vec![]);
    d.out_of_scope.insert(b.key.clone());
    let plan1 = plan(&d, &state, &Policy::default());
    assert!(
        matches!(&plan1.operations[..], [Operation::DisableUser { reason, .. }] if reason == "out of scope")
    );
    let skip = Policy {
        skip_out_of_scope_deletions: true,
        ..Policy::default()
    };
    assert!(plan(&d, &state, &skip).is_empty());
}

#[test]
fn protected_users_are_never_touched() {
    let (a, b) = (
        person("1", "a@x.com", "Eng"),
        person("2", "Admin@x.com", "Eng"),
    );
    let state = state_of(&[(&a, Status::Active), (&b, Status::Active)]);
    let policy = Policy {
        protected_users: BTreeSet::from(["Admin@X.com".into()]),
        ..Policy::default()
    };
    assert!(plan(&desired(vec![a], vec![]), &state, &policy).is_empty());
}

#[test]
fn users_outside_verified_domains_are_skipped_with_a_warning() {
    let (a, b) = (
        person("1", "a@x.com", "Eng"),
        person("2", "b@elsewhere.org", "Eng"),
    );
    let policy = Policy {
        verified_domains: BTreeSet::from(["X.com".into()]),
        ..Policy::default()
    };
    let plan = plan(&desired(vec![a, b], vec![]), &State::default(), &policy);
    assert_eq!(names(&plan), ["create_user 1"]);
    assert!(
        plan.warnings[0].contains("\"elsewhere.org\" is not in target.verified_domains"),
        "{:?}",
        plan.warnings
    );
}

#[test]
fn unknown_target_objects_are_never_in_a_plan() {
    // Nothing in the state: nothing can be disabled, deleted or updated.
    let plan = plan(
        &desired(vec![], vec![]),
        &State::default(),
        &Policy::default(),
    );
    assert!(plan.is_empty());
}

#[test]
fn membership_changes_are_diffed_and_chunked() {
    let users: Vec<_> = (0..5)
        .map(|i| person(&i.to_string(), &format!("{i}@x.com"), "Eng"))
        .collect();
    let state = with_group(
        state_of(
            &users
                .iter()
                .map(|u| (u, Status::Active))
                .collect::<Vec<_>>(),
        ),
        "eng",
        "Engineering",
        &["0", "1"],
    );
    let d = desired(
        users.clone(),
        vec![group("eng", "Engineering", &["1", "2", "3", "4"])],
    );
    let policy = Policy {
        member_chunk: 2,
        ..Policy::default()
    };
    let plan = plan(&d, &state, &policy);
    assert_eq!(
        names(&plan),
        ["add_members eng", "add_members eng", "remove_members eng"]
    );
    assert_eq!(plan.summary.add_members, 3);
    assert_eq!(plan.summary.remove_members, 1);
}

#[test]
fn group_renames_follow_the_target_and_on_rename() {
    let a = person("1", "a@x.com", "Eng");
    let state = with_group(state_of(&[(&a, Status::Active)]), "eng", "Eng", &["1"]);
    let d = desired(vec![a], vec![group("eng", "Engineering", &["1"])]);

    let generic = plan(&d, &state, &Policy::default());
    assert_eq!(names(&generic), ["update_group eng"]);

    let atlassian = Policy {
        target_renames_groups: false,
        ..Policy::default()
    };
    let keep = plan(&d, &state, &atlassian);
    assert!(keep.is_empty());
    assert_eq!(keep.warnings.len(), 1);

    let recreate = Policy {
        on_rename: OnRename::Recreate,
        ..atlassian
    };
    let plan = plan(&d, &state, &recreate);
    assert_eq!(
        names(&plan),
        ["create_group eng", "add_members eng", "delete_group eng"]
    );
    assert_eq!(plan.summary.removals(), 1);
}

#[test]
fn group_deletion_is_opt_in() {
    let state = with_group(State::default(), "old", "Old", &[]);
    assert!(plan(&desired(vec![], vec![]), &state, &Policy::default()).is_empty());
    let policy = Policy {
        delete_groups: true,
        ..Policy::default()
    };
    assert_eq!(
        names(&plan(&desired(vec![], vec![]), &state, &policy)),
        ["delete_group old"]
    );
}

#[test]
fn a_user_who_is_no_longer_assigned_is_removed_saying_so() {
    let (a, b) = (person("1", "a@x.com", "Eng"), person("2", "b@x.com", "Eng"));
    let state = state_of(&[(&a, Status::Active), (&b, Status::Active)]);
    let mut d = desired(vec![], vec![]);
    d.out_of_scope.extend([a.key.clone(), b.key.clone()]);
    d.unassigned_users.insert(b.key.clone());
    let planned = plan(&d, &state, &Policy::default());
    let reasons: Vec<&str> = planned
        .operations
        .iter()
        .filter_map(|op| match op {
            Operation::DisableUser { reason, .. } => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, ["out of scope", "no longer assigned"]);
}

#[test]
fn the_mappings_warnings_lead_the_plans_and_change_no_operation() {
    let a = person("1", "a@x.com", "Eng");
    let state = state_of(&[(&a, Status::Active)]);
    let mut d = desired(vec![a.clone()], vec![]);
    let quiet = plan(&d, &state, &Policy::default());
    d.warnings
        .push("mapping.yaml: `assign.users` names \"gone\", which the source does not have".into());
    let warned = plan(&d, &state, &Policy::default());
    assert_eq!(warned.warnings, d.warnings);
    assert_eq!(warned.operations, quiet.operations);
    assert_eq!(warned.fingerprint, quiet.fingerprint);
}

#[test]
fn a_group_that_is_no_longer_assigned_is_deleted_saying_so() {
    let state = with_group(State::default(), "old", "Old", &[]);
    let state = with_group(state, "gone", "Gone", &[]);
    let mut d = desired(vec![], vec![]);
    d.unassigned_groups.insert(
        GroupKey::new("old"),
        "no longer assigned: not in assign.groups".into(),
    );
    let policy = Policy {
        delete_groups: true,
        ..Policy::default()
    };
    let planned = plan(&d, &state, &policy);
    let reasons: Vec<(&str, &str)> = planned
        .operations
        .iter()
        .filter_map(|op| match op {
            Operation::DeleteGroup { key, reason, .. } => Some((key.as_str(), reason.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("gone", "not in the source"),
            ("old", "no longer assigned: not in assign.groups")
        ]
    );
    // Without `groups.delete` it stays, as any group leaving scope does.
    assert!(plan(&d, &state, &Policy::default()).is_empty());
}

#[test]
fn members_who_will_not_exist_are_not_added() {
    let mut a = person("1", "a@x.com", "Eng");
    a.active = false;
    let plan = plan(
        &desired(vec![a], vec![group("g", "G", &["1"])]),
        &State::default(),
        &Policy::default(),
    );
    assert_eq!(names(&plan), ["create_group g"]);
}

#[test]
fn guards_stop_empty_sources_and_mass_removals() {
    let users: Vec<_> = (0..20)
        .map(|i| person(&i.to_string(), &format!("{i}@x.com"), "Eng"))
        .collect();
    let state = state_of(
        &users
            .iter()
            .map(|u| (u, Status::Active))
            .collect::<Vec<_>>(),
    );
    let policy = Policy {
        max_removals: RemovalLimit::Percent(10.0),
        ..Policy::default()
    };
    let empty = desired(vec![], vec![]);
    let p = plan(&empty, &state, &policy);
    assert!(matches!(
        guard::check(&p, &policy, false),
        Err(guard::GuardStop::EmptySource { managed: 20 })
    ));
    let half = desired(users[..10].to_vec(), vec![]);
    let p = plan(&half, &state, &policy);
    let stop = guard::check(&p, &policy, false).unwrap_err();
    assert!(stop.to_string().contains("removes 10 objects"), "{stop}");
    assert!(guard::check(&p, &policy, true).is_ok());
    let two_leave = desired(users[..18].to_vec(), vec![]);
    let p = plan(&two_leave, &state, &policy);
    assert!(guard::check(&p, &policy, false).is_ok());
}

#[test]
fn emptying_groups_is_held_by_the_member_removal_limit() {
    let users: Vec<_> = (0..30)
        .map(|i| person(&format!("{i:02}"), &format!("{i}@x.com"), "Eng"))
        .collect();
    let keys: Vec<String> = users.iter().map(|u| u.key.to_string()).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let state = state_of(
        &users
            .iter()
            .map(|u| (u, Status::Active))
            .collect::<Vec<_>>(),
    );
    let state = with_group(state, "eng", "Engineering", &keys);
    let policy = Policy::default();
    let emptied = desired(users.clone(), vec![group("eng", "Engineering", &[])]);
    let p = plan(&emptied, &state, &policy);
    assert_eq!(p.managed_memberships, 30);
    assert_eq!(p.summary.removals(), 0);
    let stop = guard::check(&p, &policy, false).unwrap_err();
    assert_eq!(
        stop.to_string(),
        "the plan removes 30 group memberships (from 1 groups), above the limit of 10 (max_member_removals 10% of 30 managed memberships, at least 10 for a percentage)"
    );
    assert!(p.operations.iter().all(|op| stop.holds(op)));
    assert!(guard::check(&p, &policy, true).is_ok());
    // Ten leave the group: within the floor of a small directory.
    let moved = desired(
        users.clone(),
        vec![group("eng", "Engineering", &keys[10..])],
    );
    assert!(guard::check(&plan(&moved, &state, &policy), &policy, false).is_ok());
    // A count is taken as written.
    let strict = Policy {
        max_member_removals: RemovalLimit::Count(5),
        ..Policy::default()
    };
    assert!(matches!(
        guard::check(&plan(&moved, &state, &strict), &strict, false),
        Err(guard::GuardStop::TooManyMemberRemovals {
            removals: 10,
            limit: 5,
            ..
        })
    ));
}

#[test]
fn full_resync_adopts_repairs_and_recreates() {
    let (a, b, c) = (
        person("1", "a@x.com", "Eng"),
        person("2", "b@x.com", "Eng"),
        person("3", "c@x.com", "Eng"),
    );
    // State knows a and b; b was deleted by hand; a's title was changed by hand;
    // c exists in the target already (made by hand), unknown to the state.
    let mut state = state_of(&[(&a, Status::Active), (&b, Status::Active)]);
    state = with_group(state, "g", "G", &["1"]);
    let mut drifted = a.attrs.clone();
    drifted.insert(UserAttr::Title, "Hand-edited");
    let target = TargetSnapshot {
        users: vec![
            RemoteUser {
                id: ScimId::new("id-1"),
                attrs: drifted,
                active: true,
            },
            RemoteUser {
                id: ScimId::new("hand-3"),
                attrs: attrs(&[(UserAttr::UserName, "C@X.com"), (UserAttr::NickName, "cc")]),
                active: true,
            },
            RemoteUser {
                id: ScimId::new("stranger"),
                attrs: attrs(&[(UserAttr::UserName, "stranger@x.com")]),
                active: true,
            },
        ],
        groups: vec![RemoteGroup {
            id: ScimId::new("gid-g"),
            display_name: "G".into(),
            external_id: None,
            members: vec![],
        }],
        ..TargetSnapshot::default()
    };
    let d = desired(vec![a, b, c], vec![group("g", "G", &["1"])]);
    let input = PlanningInput::new(
        d,
        state.clone(),
        Some(target),
        options(&Policy::default()),
        |_, _| Ok::<(), ()>(()),
    )
    .unwrap();
    let plan = crate::plan::plan(&input);
    assert!(plan.full);
    assert_eq!(
        names(&plan),
        [
            "adopt_user 3",
            "create_user 2",
            "update_user 1",
            "update_user 3",
            "add_members g"
        ]
    );
    // The stranger is never touched, and c's hand-set nickName is not ours to remove.
    let Operation::UpdateUser { changes, .. } = &plan.operations[3] else {
        panic!()
    };
    assert!(!changes.contains_key(&UserAttr::NickName));
    // What --full found is in the plan for the executor to commit: b is gone,
    // a's title is as the target holds it, the group has no members yet.
    assert!(plan.observed.contains(&StateChange::UserStatus {
        key: SourceKey::new("2"),
        status: Status::Removed,
    }));
    assert!(plan.observed.iter().any(|c| matches!(c,
        StateChange::PutUser { key, user } if key.as_str() == "1"
            && user.attrs.as_ref().unwrap().get(UserAttr::Title).unwrap() == "Hand-edited")));
    assert!(plan.observed.contains(&StateChange::SetMembers {
        group: GroupKey::new("g"),
        users: BTreeSet::new(),
    }));
    assert_eq!(plan.observed_objects(), 3);
}

#[test]
fn full_resync_matches_members_stored_by_user_name_or_ref_and_removes_dangling_ones() {
    let (a, b, c) = (
        person("1", "a@x.com", "Eng"),
        person("2", "b@x.com", "Eng"),
        person("3", "c@x.com", "Eng"),
    );
    let state = with_group(
        state_of(&[
            (&a, Status::Active),
            (&b, Status::Active),
            (&c, Status::Active),
        ]),
        "g",
        "G",
        &["1", "2", "3"],
    );
    let remote = |d: &crate::model::DesiredUser| RemoteUser {
        id: ScimId::new(format!("id-{}", d.key)),
        attrs: d.attrs.clone(),
        active: true,
    };
    let target = TargetSnapshot {
        users: vec![remote(&a), remote(&b), remote(&c)],
        groups: vec![RemoteGroup {
            id: ScimId::new("gid-g"),
            display_name: "G".into(),
            external_id: None,
            members: vec![
                // a by userName (another case), b by $ref, c by id; then a
                // deleted user's id the server kept.
                RemoteMember::id("A@X.com"),
                RemoteMember {
                    value: "whatever".into(),
                    ref_id: Some(ScimId::new("id-2")),
                },
                RemoteMember::id("id-3"),
                RemoteMember::id("deleted-9"),
                // Unresolved, but its lookup did not answer 404: kept.
                RemoteMember::id("unknown-7"),
            ],
        }],
        gone_members: ["deleted-9".to_owned()].into(),
        ..Default::default()
    };
    let d = desired(vec![a, b, c], vec![group("g", "G", &["1", "2", "3"])]);
    let input = PlanningInput::new(
        d,
        state,
        Some(target),
        options(&Policy::default()),
        |_, _| Ok::<(), ()>(()),
    )
    .unwrap();
    let plan = crate::plan::plan(&input);
    // Nobody is re-added: all three are members as the server stores them.
    assert_eq!(names(&plan), ["remove_members g"]);
    assert!(matches!(&plan.operations[0],
        Operation::RemoveMembers { members, dangling, .. }
            if members.is_empty() && dangling == &["deleted-9".to_owned()]));
    assert_eq!(plan.summary.remove_members, 0);
    assert_eq!(plan.summary.remove_dangling_members, 1);
    let text = plan_text(&plan, PlanView::new(Style { color: false }));
    assert!(
        text.contains(
            "- remove 1 dangling member (no such user) from group G\n      - value deleted-9\n"
        ),
        "{text}"
    );
    assert!(plan.observed.contains(&StateChange::SetMembers {
        group: GroupKey::new("g"),
        users: ["1", "2", "3"].into_iter().map(SourceKey::new).collect(),
    }));
    // Not weighed by the membership removal limit.
    let none = Policy {
        max_member_removals: RemovalLimit::Count(0),
        ..Policy::default()
    };
    assert!(guard::check(&plan, &none, false).is_ok());
}

#[test]
fn a_forgotten_preload_cannot_hide_an_update() {
    // The state as loaded from the DB carries no attributes; PlanningInput::new
    // asks the loader for exactly the changed user, and a loader that fails to
    // deliver leads to a full update, never to none.
    let a = person("1", "a@x.com", "Eng");
    let mut state = state_of(&[(&a, Status::Active)]);
    state.users.get_mut(&a.key).unwrap().attrs = None;
    let mut moved = a.clone();
    moved.attrs.insert(UserAttr::Title, "Lead");
    let d = desired(vec![moved], vec![]);
    let mut asked = Vec::new();
    let input = PlanningInput::new(d, state, None, options(&Policy::default()), |_, keys| {
        asked.extend(keys.iter().cloned());
        Ok::<(), ()>(())
    })
    .unwrap();
    assert_eq!(asked, std::slice::from_ref(&a.key));
    let plan = crate::plan::plan(&input);
    assert_eq!(names(&plan), ["update_user 1"]);
}

// ---------------------------------------------------------------------------
// Golden snapshots.

#[test]
fn golden_plan_text() {
    let (d, s) = golden_scenario();
    let plan = plan(&d, &s, &Policy::default());
    insta::assert_snapshot!(plan_text(&plan, PlanView::new(Style { color: false })));
}

#[test]
fn golden_plan_text_in_detail_shows_what_a_created_user_is_created_with() {
    let (d, s) = golden_scenario();
    let plan = plan(&d, &s, &Policy::default());
    let view = PlanView {
        style: Style { color: false },
        detail: true,
    };
    insta::assert_snapshot!(plan_text(&plan, view));
}

#[test]
fn a_membership_change_names_its_members_up_to_the_limit() {
    let people: Vec<_> = (0..MEMBERS_LISTED + 3)
        .map(|i| {
            person(
                &format!("k{i:02}"),
                &format!("p{i}@example.com"),
                "Engineer",
            )
        })
        .collect();
    let keys: Vec<String> = people.iter().map(|p| p.key.as_str().to_string()).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let d = desired(people, vec![group("eng", "Engineering", &keys)]);
    let plan = plan(&d, &State::default(), &Policy::default());
    let text = plan_text(&plan, PlanView::new(Style { color: false }));
    assert!(
        text.contains("\nMemberships to add:\n  + add 23 members to group Engineering\n"),
        "{text}"
    );
    // By userName and key.
    assert!(
        text.contains("      + p0@example.com (key k00)\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "      + p{0}@example.com (key k{0:02})\n",
            MEMBERS_LISTED - 1
        )),
        "{text}"
    );
    assert!(
        !text.contains(&format!(
            "+ p{0}@example.com (key k{0:02})\n",
            MEMBERS_LISTED
        )),
        "{text}"
    );
    // A member no one can name (a plan read back from a file) by key alone.
    let mut unnamed = plan.clone();
    unnamed.member_names = Default::default();
    let text = plan_text(&unnamed, PlanView::new(Style { color: false }));
    assert!(text.contains("      + key k00\n"), "{text}");
    assert!(text.contains("      … and 3 more\n"), "{text}");
}

#[test]
fn golden_plan_json() {
    let (d, s) = golden_scenario();
    let mut plan = plan(&d, &s, &Policy::default());
    plan.fingerprint = "fixed".into();
    let mut json = Vec::new();
    write_plan_json(&plan, &mut json).unwrap();
    insta::assert_snapshot!(String::from_utf8(json).unwrap());
}

// ---------------------------------------------------------------------------
// Properties of plans themselves. Convergence is a property of planner and
// executor together, checked against the real executor in `apply`'s tests.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn plans_only_touch_owned_objects((d, state) in arb_world(), policy in arb_policy()) {
        let p = plan(&d, &state, &policy);
        for op in &p.operations {
            match op {
                Operation::UpdateUser { key, scim_id, .. }
                | Operation::EnableUser { key, scim_id, .. }
                | Operation::DisableUser { key, scim_id, .. }
                | Operation::DeleteUser { key, scim_id, .. } => {
                    let s = state.users.get(key);
                    prop_assert!(s.is_some_and(|s| s.status != Status::Removed && s.scim_id == *scim_id), "{op:?}");
                }
                Operation::UpdateGroup { key, scim_id, .. } | Operation::DeleteGroup { key, scim_id, .. } => {
                    prop_assert!(state.groups.get(key).is_some_and(|g| g.scim_id == *scim_id), "{op:?}");
                }
                _ => {}
            }
        }
    }

    #[test]
    fn removals_never_pass_the_limit_without_the_override((d, state) in arb_world(), policy in arb_policy(), limit in 0..5u64) {
        let policy = Policy { max_removals: RemovalLimit::Count(limit), ..policy };
        let p = plan(&d, &state, &policy);
        if guard::check(&p, &policy, false).is_ok() {
            prop_assert!(p.summary.removals() <= limit);
        }
        prop_assert!(guard::check(&p, &policy, true).is_ok());
    }

    #[test]
    fn plans_are_deterministic((d, state) in arb_world(), policy in arb_policy()) {
        prop_assert_eq!(plan(&d, &state, &policy), plan(&d, &state, &policy));
    }
}

#[test]
fn a_held_group_is_neither_deleted_nor_touched_and_the_plan_says_so() {
    use crate::model::{HeldGroup, Origin};
    let a = person("1", "a@x.com", "Eng");
    let b = person("2", "b@x.com", "Eng");
    // "eng" lost a member (2 left the source) and shares its name with another group.
    let state = with_group(
        state_of(&[(&a, Status::Active), (&b, Status::Active)]),
        "eng",
        "Eng",
        &["1", "2"],
    );
    let mut d = desired(vec![a], vec![]);
    d.held_groups.push(HeldGroup {
        key: GroupKey::new("eng"),
        origin: Origin::new("CN=Eng,OU=A,DC=x"),
        reason: "2 groups share the displayName \"Eng\"".into(),
    });
    let policy = Policy {
        delete_groups: true,
        ..Policy::default()
    };
    let plan = plan(&d, &state, &policy);
    // The leaver is still disabled; the group is neither deleted nor emptied.
    assert_eq!(names(&plan), ["disable_user 2"]);
    assert_eq!(plan.held_groups, 1);
    assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
    assert!(
        plan.warnings[0].contains("CN=Eng,OU=A,DC=x"),
        "{:?}",
        plan.warnings
    );

    let no_groups = Policy {
        provision_groups: false,
        ..policy
    };
    assert_eq!(super::testkit::plan(&d, &state, &no_groups).held_groups, 0);
}

/// A `--full` plan that adopts an account made by hand in another case brings
/// it in line once where the target can change the attribute (later cycles
/// compare as the target does), and leaves an immutable one as it is.
#[test]
fn full_resync_brings_an_adopted_accounts_case_in_line_unless_immutable() {
    let a = person("1", "Ann@Example.com", "Eng");
    let mut held = a.attrs.clone();
    held.insert(UserAttr::UserName, "ANN@example.com");
    let target = TargetSnapshot {
        users: vec![RemoteUser {
            id: ScimId::new("hand"),
            attrs: held,
            active: true,
        }],
        ..Default::default()
    };
    let plan_with = |rules: crate::model::TargetRules| {
        let mut opts = options(&Policy::default());
        opts.target_rules = rules;
        let input = PlanningInput::new(
            desired(vec![a.clone()], vec![]),
            State::default(),
            Some(target.clone()),
            opts,
            |_, _| Ok::<(), ()>(()),
        )
        .unwrap();
        crate::plan::plan(&input)
    };
    let folded: std::collections::BTreeSet<UserAttr> = [UserAttr::UserName].into();
    let mutable = plan_with(crate::model::TargetRules {
        folded: folded.clone(),
        ..Default::default()
    });
    assert_eq!(names(&mutable), ["adopt_user 1", "update_user 1"]);
    let immutable = plan_with(crate::model::TargetRules {
        folded: folded.clone(),
        fixed: folded,
        ..Default::default()
    });
    assert_eq!(names(&immutable), ["adopt_user 1"]);
}

/// A `--full` plan against a target whose schema says emails are compared
/// ignoring case (a server that lower-cases email domains) and externalId is
/// read-only (a server that drops it): no update, and none again next time.
#[test]
fn full_resync_folds_case_and_skips_attributes_the_target_does_not_hold() {
    let a = person("1", "Ann@Example.COM", "Eng");
    let state = state_of(&[(&a, Status::Active)]);
    let mut stored = a.attrs.clone();
    stored.insert(UserAttr::Email, "Ann@example.com");
    stored.insert(UserAttr::UserName, "ann@example.com");
    stored.remove(UserAttr::ExternalId);
    let target = TargetSnapshot {
        users: vec![RemoteUser {
            id: ScimId::new("id-1"),
            attrs: stored,
            active: true,
        }],
        groups: vec![],
        ..Default::default()
    };
    let plan_with = |rules: crate::model::TargetRules| {
        let mut opts = options(&Policy::default());
        opts.target_rules = rules;
        let input = PlanningInput::new(
            desired(vec![a.clone()], vec![]),
            state.clone(),
            Some(target.clone()),
            opts,
            |_, _| Ok::<(), ()>(()),
        )
        .unwrap();
        crate::plan::plan(&input)
    };
    // Compared exactly, every difference is drift.
    let exact = plan_with(Default::default());
    let Some(Operation::UpdateUser { changes, .. }) = exact.operations.first() else {
        panic!("{:?}", exact.operations)
    };
    assert!(changes.contains_key(&UserAttr::Email));
    assert!(changes.contains_key(&UserAttr::ExternalId));
    // As the schema says: nothing to do.
    let rules = crate::model::TargetRules {
        folded: [UserAttr::UserName, UserAttr::Email].into(),
        unheld: [UserAttr::ExternalId].into(),
        ..Default::default()
    };
    let folded = plan_with(rules.clone());
    assert!(folded.operations.is_empty(), "{:?}", folded.operations);
    // A real change of a folded attribute is still planned.
    let mut moved = a.clone();
    moved.attrs.insert(UserAttr::Email, "ann@elsewhere.com");
    let mut opts = options(&Policy::default());
    opts.target_rules = rules;
    let input = PlanningInput::new(
        desired(vec![moved], vec![]),
        state.clone(),
        Some(target.clone()),
        opts,
        |_, _| Ok::<(), ()>(()),
    )
    .unwrap();
    let plan = crate::plan::plan(&input);
    let Some(Operation::UpdateUser { changes, .. }) = plan.operations.first() else {
        panic!("{:?}", plan.operations)
    };
    assert_eq!(changes.keys().collect::<Vec<_>>(), [&UserAttr::Email]);
}

/// A plain plan (no target read) does not plan a change of an attribute the
/// target does not hold: `sync` would not send it either.
#[test]
fn plain_plan_skips_changes_of_attributes_the_target_does_not_hold() {
    let a = person("1", "a@x.com", "Eng");
    let state = state_of(&[(&a, Status::Active)]);
    let mut moved = a.clone();
    moved.attrs.insert(UserAttr::ExternalId, "other");
    moved.attrs.insert(UserAttr::Title, "Boss");
    let mut opts = options(&Policy::default());
    opts.target_rules.unheld = [UserAttr::ExternalId].into();
    let input = PlanningInput::new(desired(vec![moved], vec![]), state, None, opts, |_, _| {
        Ok::<(), ()>(())
    })
    .unwrap();
    let plan = crate::plan::plan(&input);
    let Some(Operation::UpdateUser { changes, .. }) = plan.operations.first() else {
        panic!("{:?}", plan.operations)
    };
    assert_eq!(changes.keys().collect::<Vec<_>>(), [&UserAttr::Title]);
}

#[test]
fn a_create_is_written_as_new_changes_and_read_back_only_as_such() {
    let op = Operation::CreateUser {
        key: SourceKey::new("k1"),
        user_name: UserName::new("ann@x.com"),
        attrs: attrs(&[(UserAttr::UserName, "ann@x.com"), (UserAttr::Title, "Eng")]),
        name_step: None,
    };
    let json = serde_json::to_value(&op).unwrap();
    assert_eq!(
        json["changes"],
        serde_json::json!({
            "userName": {"old": null, "new": "ann@x.com"},
            "title": {"old": null, "new": "Eng"},
        })
    );
    assert_eq!(
        serde_json::from_value::<Operation>(json.clone()).unwrap(),
        op
    );
    // An edited plan whose create claims an old value is refused.
    let mut edited = json;
    edited["changes"]["title"]["old"] = "Boss".into();
    let err = serde_json::from_value::<Operation>(edited).unwrap_err();
    assert!(err.to_string().contains("`title`"), "{err}");
}

// ---------------------------------------------------------------------------
// The controls admins know: per-action switches, disabled users under
// `remove_action: delete`, the floor of a percentage removal limit.

/// The plan's skipped operations as `"<name> <subject> (<switch>)"`, in order.
fn skipped_names(plan: &super::Plan) -> Vec<String> {
    plan.skipped
        .iter()
        .map(|s| format!("{} {} ({})", s.op.name(), s.op.subject(), s.action_off))
        .collect()
}

fn with_actions(off: &[Action]) -> Policy {
    let mut actions = Actions::default();
    for a in off {
        match a {
            Action::CreateUsers => actions.users.create = false,
            Action::UpdateUsers => actions.users.update = false,
            Action::DisableUsers => actions.users.disable = false,
            Action::DeleteUsers => actions.users.delete = false,
            Action::CreateGroups => actions.groups.create = false,
            Action::UpdateGroups => actions.groups.update = false,
            Action::DeleteGroups => actions.groups.delete = false,
        }
    }
    Policy {
        actions,
        ..Policy::default()
    }
}

#[test]
fn a_create_switched_off_is_skipped_with_its_memberships_and_planned_again() {
    let (a, b) = (person("1", "a@x.com", "Eng"), person("2", "b@x.com", "Eng"));
    let state = with_group(state_of(&[(&a, Status::Active)]), "eng", "Eng", &["1"]);
    let d = desired(
        vec![a.clone(), b.clone()],
        vec![
            group("eng", "Eng", &["1", "2"]),
            group("ops", "Ops", &["2"]),
        ],
    );
    let policy = with_actions(&[Action::CreateUsers]);
    let p = plan(&d, &state, &policy);
    // Ops is created (empty); nobody is added anywhere.
    assert_eq!(names(&p), ["create_group ops"]);
    assert_eq!(
        skipped_names(&p),
        [
            "create_user 2 (users.create)",
            "add_members eng (users.create)",
            "add_members ops (users.create)"
        ]
    );
    assert_eq!(p.summary.create_users, 0);
    // Nothing was recorded: the next plan skips it again, then creates it.
    assert_eq!(plan(&d, &state, &policy).skipped, p.skipped);
    let on = plan(&d, &state, &Policy::default());
    assert_eq!(
        names(&on),
        [
            "create_user 2",
            "create_group ops",
            "add_members eng",
            "add_members ops"
        ]
    );
    assert!(on.skipped.is_empty());
    // The fingerprint covers what is skipped.
    assert_ne!(p.fingerprint, on.fingerprint);
}

#[test]
fn skipped_removals_keep_the_account_and_its_groups_and_pass_the_removal_limit() {
    let users: Vec<_> = (0..4)
        .map(|i| person(&i.to_string(), &format!("{i}@x.com"), "Eng"))
        .collect();
    let state = with_group(
        state_of(
            &users
                .iter()
                .map(|u| (u, Status::Active))
                .collect::<Vec<_>>(),
        ),
        "eng",
        "Eng",
        &["0", "1", "2", "3"],
    );
    let d = desired(users[..1].to_vec(), vec![group("eng", "Eng", &["0"])]);
    let strict = Policy {
        max_removals: RemovalLimit::Count(0),
        max_member_removals: RemovalLimit::Count(0),
        ..with_actions(&[Action::DisableUsers])
    };
    let p = plan(&d, &state, &strict);
    assert!(p.operations.is_empty(), "{:?}", names(&p));
    assert_eq!(
        skipped_names(&p),
        [
            "remove_members eng (users.disable)",
            "disable_user 1 (users.disable)",
            "disable_user 2 (users.disable)",
            "disable_user 3 (users.disable)"
        ]
    );
    assert_eq!(p.summary.removals(), 0);
    assert!(guard::check(&p, &strict, false).is_ok());
    // With disables on, the same plan is stopped.
    let on = Policy {
        actions: Actions::default(),
        ..strict.clone()
    };
    assert!(guard::check(&plan(&d, &state, &on), &on, false).is_err());
    // Under remove_action: delete the delete switch decides.
    let delete_off = Policy {
        remove_action: RemoveAction::Delete,
        ..with_actions(&[Action::DeleteUsers])
    };
    let p = plan(&d, &state, &delete_off);
    assert!(p.operations.is_empty(), "{:?}", names(&p));
    assert_eq!(p.skipped.len(), 4);
    assert!(
        p.skipped
            .iter()
            .all(|s| s.action_off == Action::DeleteUsers)
    );
}

#[test]
fn an_enable_is_an_update_and_a_rename_in_place_a_group_update() {
    let a = person("1", "a@x.com", "Eng");
    let state = with_group(state_of(&[(&a, Status::Disabled)]), "eng", "Eng", &[]);
    let d = desired(vec![a], vec![group("eng", "Engineering", &["1"])]);
    let p = plan(&d, &state, &with_actions(&[Action::UpdateUsers]));
    assert_eq!(names(&p), ["update_group eng", "add_members eng"]);
    assert_eq!(skipped_names(&p), ["enable_user 1 (users.update)"]);
    let p = plan(&d, &state, &with_actions(&[Action::UpdateGroups]));
    assert_eq!(names(&p), ["enable_user 1"]);
    assert_eq!(
        skipped_names(&p),
        [
            "update_group eng (groups.update)",
            "add_members eng (groups.update)"
        ]
    );
}

#[test]
fn a_recreate_needs_both_group_switches_and_otherwise_keeps_the_group_in_step() {
    let (a, b) = (person("1", "a@x.com", "Eng"), person("2", "b@x.com", "Eng"));
    let state = with_group(
        state_of(&[(&a, Status::Active), (&b, Status::Active)]),
        "eng",
        "Eng",
        &["1"],
    );
    let d = desired(vec![a, b], vec![group("eng", "Platform", &["1", "2"])]);
    let recreate = |off: &[Action]| Policy {
        on_rename: OnRename::Recreate,
        ..with_actions(off)
    };
    let p = plan(&d, &state, &recreate(&[]));
    assert_eq!(
        names(&p),
        ["create_group eng", "add_members eng", "delete_group eng"]
    );
    for (off, switch) in [
        (Action::DeleteGroups, "groups.delete"),
        (Action::CreateGroups, "groups.create"),
    ] {
        let p = plan(&d, &state, &recreate(&[off]));
        // The old group stays, under its old name, and gains the new member.
        assert_eq!(names(&p), ["add_members eng"], "{switch}");
        assert_eq!(
            skipped_names(&p),
            [
                format!("create_group eng ({switch})"),
                format!("delete_group eng ({switch})")
            ]
        );
    }
}

#[test]
fn a_user_disabled_in_the_source_is_deleted_only_with_disabled_action_remove_action() {
    let (a, b) = (person("1", "a@x.com", "Eng"), person("2", "b@x.com", "Eng"));
    let state = with_group(
        state_of(&[(&a, Status::Active), (&b, Status::Active)]),
        "eng",
        "Eng",
        &["1", "2"],
    );
    let mut off = b.clone();
    off.active = false;
    let d = desired(vec![a, off], vec![group("eng", "Eng", &["1", "2"])]);
    let delete = Policy {
        remove_action: RemoveAction::Delete,
        ..Policy::default()
    };
    // The default: disabled, whatever remove_action says (as Entra does).
    assert_eq!(names(&plan(&d, &state, &delete)), ["disable_user 2"]);
    let pingone = Policy {
        disabled_action: DisabledAction::RemoveAction,
        ..delete
    };
    let p = plan(&d, &state, &pingone);
    // As a leaver under delete: out of its groups, then deleted.
    assert_eq!(names(&p), ["remove_members eng", "delete_user 2"]);
    let Operation::DeleteUser { reason, .. } = &p.operations[1] else {
        unreachable!()
    };
    assert_eq!(reason, "inactive in the source");
    assert_eq!(p.summary.removals(), 1);
    // An account already disabled is deleted too.
    let disabled = with_group(state_of(&[(&b, Status::Disabled)]), "eng", "Eng", &[]);
    let p = plan(
        &desired(vec![d.users[1].clone()], vec![]),
        &disabled,
        &pingone,
    );
    assert_eq!(names(&p), ["delete_user 2"]);
    // Under remove_action: disable it is disabled either way.
    let disable = Policy {
        disabled_action: DisabledAction::RemoveAction,
        ..Policy::default()
    };
    assert_eq!(names(&plan(&d, &state, &disable)), ["disable_user 2"]);
}

#[test]
fn a_percentage_removal_limit_lets_the_first_leavers_of_a_small_directory_through() {
    let users: Vec<_> = (0..19)
        .map(|i| person(&format!("{i:02}"), &format!("{i}@x.com"), "Eng"))
        .collect();
    let state = state_of(
        &users
            .iter()
            .map(|u| (u, Status::Active))
            .collect::<Vec<_>>(),
    );
    let policy = Policy::default();
    assert_eq!(policy.max_removals, RemovalLimit::Percent(5.0));
    // 5% of 19 is 0; one leaver, and three, pass.
    for left in [1, 3] {
        let p = plan(&desired(users[left..].to_vec(), vec![]), &state, &policy);
        assert_eq!(p.summary.removals(), left as u64);
        assert!(guard::check(&p, &policy, false).is_ok(), "{left} leavers");
    }
    let p = plan(&desired(users[4..].to_vec(), vec![]), &state, &policy);
    let stop = guard::check(&p, &policy, false).unwrap_err();
    assert_eq!(
        stop.to_string(),
        "the plan removes 4 objects (4 disables, 0 user deletes, 0 group deletes), above the limit of 3 (max_removals 5% of 19 managed users, at least 3 for a percentage)"
    );
    // A count is taken as written, and says no floor.
    let counted = Policy {
        max_removals: RemovalLimit::Count(0),
        ..Policy::default()
    };
    let p = plan(&desired(users[1..].to_vec(), vec![]), &state, &counted);
    let stop = guard::check(&p, &counted, false).unwrap_err();
    assert!(
        stop.to_string()
            .ends_with("(max_removals 0 of 19 managed users)"),
        "{stop}"
    );
}

#[test]
fn a_plan_with_skipped_operations_renders_them_under_their_switch() {
    let (a, b) = (person("1", "a@x.com", "Eng"), person("2", "b@x.com", "Eng"));
    let state = state_of(&[(&a, Status::Active)]);
    let d = desired(vec![b], vec![]);
    let p = plan(
        &d,
        &state,
        &with_actions(&[Action::CreateUsers, Action::DisableUsers]),
    );
    let text = plan_text(&p, PlanView::new(Style { color: false }));
    assert_eq!(
        text,
        "No changes to send; 2 operations skipped because their action is off (policy.actions).\n\
         \nSkipped, not sent (policy.actions.users.create is off):\n\
         \x20 + create user b@x.com (key 2)\n\
         \nSkipped, not sent (policy.actions.users.disable is off):\n\
         \x20 - disable user a@x.com (not in the source)\n"
    );
    let mut json = Vec::new();
    write_plan_json(&p, &mut json).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(json["operations"], serde_json::json!([]));
    assert_eq!(json["skipped"][0]["op"], "create_user");
    assert_eq!(json["skipped"][0]["action_off"], "users.create");
    assert_eq!(json["skipped"][1]["action_off"], "users.disable");
    // A saved plan reads back whole.
    let back: super::Plan = serde_json::from_value(json).unwrap();
    assert_eq!(back.skipped, p.skipped);
}

fn arb_actions() -> impl Strategy<Value = Actions> {
    proptest::collection::vec(any::<bool>(), 7).prop_map(|on| {
        let mut a = Actions::default();
        a.users.create = on[0];
        a.users.update = on[1];
        a.users.disable = on[2];
        a.users.delete = on[3];
        a.groups.create = on[4];
        a.groups.update = on[5];
        a.groups.delete = on[6];
        a
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Nothing a switch turns off is ever among the operations to send, and
    /// nobody whose create is skipped is added to a group.
    #[test]
    fn switched_off_actions_are_never_sent(
        (d, state) in arb_world(),
        policy in arb_policy(),
        actions in arb_actions(),
    ) {
        let policy = Policy { actions, ..policy };
        let p = plan(&d, &state, &policy);
        let created: std::collections::HashSet<&GroupKey> = p
            .operations
            .iter()
            .filter_map(|op| match op {
                Operation::CreateGroup { key, .. } => Some(key),
                _ => None,
            })
            .collect();
        for op in &p.operations {
            if let Some(action) = Actions::action_of(op, &created) {
                prop_assert!(actions.allows(action), "{op:?} sent with {action} off");
            }
        }
        let not_created: BTreeSet<&SourceKey> = p
            .skipped
            .iter()
            .filter(|s| matches!(s.op, Operation::CreateUser { .. }))
            .filter_map(|s| s.op.user_key())
            .collect();
        for op in &p.operations {
            if let Operation::AddMembers { members, .. } = op {
                prop_assert!(members.iter().all(|m| !not_created.contains(m)), "{op:?}");
            }
        }
        for s in &p.skipped {
            prop_assert!(!actions.allows(s.action_off), "{s:?}");
        }
        prop_assert_eq!(p.summary.clone(), super::Summary::of(&p.operations));
    }
}
