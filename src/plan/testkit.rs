//! Shared builders and generators for planner and executor tests: people,
//! pushed state, groups, and random worlds of desired snapshot and state.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use crate::model::{
    AttrHash, Desired, DesiredGroup, DesiredUser, GroupKey, Origin, Ownership, ScimId, SourceKey,
    State, StateGroup, StateUser, Status, UserAttr, UserAttrs,
};
use crate::plan::{MemberNames, OnRename, Plan, PlanOptions, PlanningInput, Policy, RemoveAction};

/// The plan's operations as `"<name> <subject>"`, in order.
pub fn names(plan: &Plan) -> Vec<String> {
    plan.operations
        .iter()
        .map(|op| format!("{} {}", op.name(), op.subject()))
        .collect()
}

/// Plans `desired` against `state` (whose pushed attributes are all loaded),
/// with the members named as `plan` names them for people.
pub fn plan(desired: &Desired, state: &State, policy: &Policy) -> Plan {
    let mut plan = crate::plan::plan(&input(desired, state, policy));
    plan.member_names = MemberNames::of(plan.planned(), Some(desired), state);
    plan
}

pub fn input(desired: &Desired, state: &State, policy: &Policy) -> PlanningInput {
    PlanningInput::new(
        desired.clone(),
        state.clone(),
        None,
        options(policy),
        |_, _| Ok::<(), ()>(()),
    )
    .expect("nothing to load")
}

pub fn options(policy: &Policy) -> PlanOptions {
    PlanOptions {
        policy: policy.clone(),
        config_fingerprint: "test".into(),
        user_limit: None,
        target_rules: Default::default(),
        notes: Vec::new(),
    }
}

pub fn attrs(pairs: &[(UserAttr, &str)]) -> UserAttrs {
    pairs.iter().map(|(a, v)| (*a, v.to_string())).collect()
}

pub fn person(key: &str, email: &str, title: &str) -> DesiredUser {
    DesiredUser {
        key: SourceKey::new(key),
        origin: Origin::new(format!("users.csv line {key}")),
        attrs: attrs(&[
            (UserAttr::UserName, email),
            (UserAttr::Email, email),
            (UserAttr::ExternalId, key),
            (UserAttr::Title, title),
        ]),
        active: true,
    }
}

pub fn pushed(d: &DesiredUser, status: Status) -> StateUser {
    StateUser {
        scim_id: ScimId::new(format!("id-{}", d.key)).into(),
        user_name: d.user_name(),
        hash: AttrHash::of(&d.attrs, &BTreeSet::new()),
        status,
        ownership: Ownership::Created,
        attrs: Some(Box::new(d.attrs.clone())),
    }
}

pub fn desired(users: Vec<DesiredUser>, groups: Vec<DesiredGroup>) -> Desired {
    Desired {
        users,
        groups,
        ..Desired::default()
    }
}

pub fn state_of(users: &[(&DesiredUser, Status)]) -> State {
    State {
        users: users
            .iter()
            .map(|(d, s)| (d.key.clone(), pushed(d, *s)))
            .collect(),
        ..State::default()
    }
}

pub fn group(key: &str, name: &str, members: &[&str]) -> DesiredGroup {
    DesiredGroup {
        key: GroupKey::new(key),
        display_name: name.into(),
        members: members.iter().map(|m| SourceKey::new(*m)).collect(),
    }
}

pub fn with_group(mut state: State, key: &str, name: &str, members: &[&str]) -> State {
    state.groups.insert(
        GroupKey::new(key),
        StateGroup {
            scim_id: ScimId::new(format!("gid-{key}")),
            display_name: name.into(),
            status: Status::Active,
            ownership: Ownership::Created,
        },
    );
    state.memberships.insert(
        GroupKey::new(key),
        members.iter().map(|m| SourceKey::new(*m)).collect(),
    );
    state
}

/// The golden plans' scenario: ada unchanged, bob's title changed, chloé new
/// (in Engineering and a new group Design), dmitri gone (out of Engineering).
pub fn golden_scenario() -> (Desired, State) {
    let a = person("1", "ada@example.com", "Engineer");
    let b = person("2", "bob@example.com", "Engineer");
    let c = person("3", "chloé@example.com", "Designer");
    let d = person("4", "dmitri@example.com", "Sales");
    let state = with_group(
        state_of(&[
            (&a, Status::Active),
            (&b, Status::Active),
            (&d, Status::Active),
        ]),
        "eng",
        "Engineering",
        &["1", "2", "4"],
    );
    let mut b2 = b.clone();
    b2.attrs.insert(UserAttr::Title, "Lead \"Core\" Engineer");
    let desired = desired(
        vec![a, b2, c],
        vec![
            group("eng", "Engineering", &["1", "2", "3"]),
            group("design", "Design", &["3"]),
        ],
    );
    (desired, state)
}

pub fn arb_user(key: usize) -> impl Strategy<Value = DesiredUser> {
    (
        0..3usize,
        0..3usize,
        any::<bool>(),
        prop::option::of(0..2usize),
    )
        .prop_map(move |(mail, title, active, dept)| {
            let email = format!("u{key}.{mail}@example.com");
            let mut attrs = attrs(&[
                (UserAttr::UserName, &email),
                (UserAttr::Email, &email),
                (UserAttr::Title, ["Eng", "Lead", "Müller & Co"][title]),
            ]);
            if let Some(d) = dept {
                attrs.insert(UserAttr::Department, ["R&D", "Sales"][d]);
            }
            DesiredUser {
                key: SourceKey::new(format!("u{key}")),
                origin: Origin::new("gen"),
                attrs,
                active,
            }
        })
}

pub fn arb_status() -> impl Strategy<Value = Status> {
    prop_oneof![
        Just(Status::Active),
        Just(Status::Disabled),
        Just(Status::Removed)
    ]
}

/// A random (desired, state) pair over a pool of 12 users and 4 groups.
pub fn arb_world() -> impl Strategy<Value = (Desired, State)> {
    let users = prop::collection::vec(
        (
            prop::option::of((0..12usize).prop_flat_map(arb_user)),
            prop::option::of((arb_user(0), arb_status())),
        ),
        12,
    );
    let groups = prop::collection::vec(
        (
            prop::option::of((0..2usize, prop::collection::btree_set(0..12usize, 0..6))),
            prop::option::of((0..2usize, prop::collection::btree_set(0..12usize, 0..6))),
        ),
        4,
    );
    (users, groups).prop_map(|(users, groups)| {
        let mut d_users = BTreeMap::new();
        let mut state = State::default();
        for (i, (want, have)) in users.into_iter().enumerate() {
            let key = SourceKey::new(format!("u{i}"));
            if let Some(mut u) = want {
                u.key = key.clone();
                d_users.insert(key.clone(), u);
            }
            if let Some((mut u, status)) = have {
                u.key = key.clone();
                state.users.insert(key, pushed(&u, status));
            }
        }
        let mut d_groups = Vec::new();
        for (i, (want, have)) in groups.into_iter().enumerate() {
            let key = GroupKey::new(format!("g{i}"));
            if let Some((name, members)) = want {
                d_groups.push(DesiredGroup {
                    key: key.clone(),
                    display_name: format!("Group {i}{}", ["", " (new)"][name]).into(),
                    members: members
                        .into_iter()
                        .map(|m| SourceKey::new(format!("u{m}")))
                        .filter(|k| d_users.contains_key(k))
                        .collect(),
                });
            }
            if let Some((name, members)) = have {
                state.groups.insert(
                    key.clone(),
                    StateGroup {
                        scim_id: ScimId::new(format!("gid-{i}")),
                        display_name: format!("Group {i}{}", ["", " (new)"][name]).into(),
                        status: Status::Active,
                        ownership: Ownership::Created,
                    },
                );
                let live: BTreeSet<SourceKey> = members
                    .into_iter()
                    .map(|m| SourceKey::new(format!("u{m}")))
                    .filter(|k| {
                        state
                            .users
                            .get(k)
                            .is_some_and(|u| u.status != Status::Removed)
                    })
                    .collect();
                state.memberships.insert(key, live);
            }
        }
        (desired(d_users.into_values().collect(), d_groups), state)
    })
}

pub fn arb_policy() -> impl Strategy<Value = Policy> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        1..4usize,
    )
        .prop_map(|(delete, groups_delete, renames, recreate, chunk)| Policy {
            remove_action: if delete {
                RemoveAction::Delete
            } else {
                RemoveAction::Disable
            },
            delete_groups: groups_delete,
            target_renames_groups: renames,
            on_rename: if recreate {
                OnRename::Recreate
            } else {
                OnRename::Keep
            },
            member_chunk: chunk,
            ..Policy::default()
        })
}
