//! A plan that undoes what one past run did to the objects it touched: the
//! run's applied operations, folded per object ([`Undo`]), become a [`Plan`]
//! against the state as it is now ([`revert`]). Pure: the engine reads the
//! run's history from the state DB and hands the operations over.
//!
//! Each operation is undone against the state as it is now: a user the run
//! disabled is enabled, attribute values it changed are set back, memberships
//! it added are removed and those it removed added, users and groups it
//! deleted are created again (with new SCIM ids), users and groups it created
//! are removed (users per `remove_action`), a group it renamed gets its old
//! name back. What changed again since (an object removed later, a value
//! already back) is left out, and the plan says so, as it does for protected
//! users and groups. The plan is saved and applied like any other
//! (`sync --plan`), with the same checks; the next normal cycle applies the
//! source again, which the plan's header says.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::{
    Change, Changes, MemberNames, Operation, Plan, Policy, RemoveAction, Summary, fingerprint,
};
use crate::model::{GroupKey, GroupName, SourceKey, State, Status, UserAttr, UserAttrs, UserName};

/// What a delete destroyed, as the executor recorded it.
#[derive(Debug, Default, Deserialize)]
pub struct Destroyed {
    #[serde(default)]
    pub attrs: Option<UserAttrs>,
    #[serde(default)]
    pub groups: Vec<GroupKey>,
    #[serde(default)]
    pub members: Vec<SourceKey>,
}

/// The run a revert undoes, as the plan's header names it.
pub struct RevertedRun<'a> {
    pub id: i64,
    /// The command it was recorded under.
    pub command: &'a str,
    pub started_at: &'a str,
}

/// What a run did, folded per object (the earliest operation's old value wins).
#[derive(Default)]
pub struct Undo {
    /// Attribute values to restore: attribute → value before the run.
    attrs: BTreeMap<SourceKey, BTreeMap<UserAttr, Option<String>>>,
    enable: BTreeSet<SourceKey>,
    disable: BTreeSet<SourceKey>,
    recreate: BTreeMap<SourceKey, (UserName, UserAttrs)>,
    remove_created: BTreeSet<SourceKey>,
    add: BTreeMap<GroupKey, BTreeSet<SourceKey>>,
    remove: BTreeMap<GroupKey, BTreeSet<SourceKey>>,
    create_groups: BTreeMap<GroupKey, GroupName>,
    delete_created_groups: BTreeSet<GroupKey>,
    rename_back: BTreeMap<GroupKey, GroupName>,
}

impl Undo {
    /// Folds one applied operation in; operations come newest first, so an
    /// earlier operation's old value overwrites a later one's.
    pub fn fold(&mut self, op: Operation, destroyed: Destroyed) {
        match op {
            Operation::AdoptUser { .. } | Operation::AdoptGroup { .. } => {}
            Operation::UpdateUser { key, changes, .. } => self.restore(key, changes),
            Operation::EnableUser { key, changes, .. } => {
                self.disable.insert(key.clone());
                self.restore(key, changes);
            }
            Operation::DisableUser { key, .. } => {
                self.enable.insert(key);
            }
            Operation::DeleteUser { key, user_name, .. } => {
                for group in destroyed.groups {
                    self.add.entry(group).or_default().insert(key.clone());
                }
                self.recreate
                    .insert(key, (user_name, destroyed.attrs.unwrap_or_default()));
            }
            Operation::CreateUser { key, .. } => {
                self.remove_created.insert(key);
            }
            Operation::CreateGroup { key, .. } => {
                self.delete_created_groups.insert(key);
            }
            Operation::UpdateGroup {
                key,
                old_display_name,
                ..
            } => {
                self.rename_back.insert(key, old_display_name);
            }
            Operation::DeleteGroup {
                key, display_name, ..
            } => {
                self.add
                    .entry(key.clone())
                    .or_default()
                    .extend(destroyed.members);
                self.create_groups.insert(key, display_name);
            }
            Operation::AddMembers { key, members, .. } => {
                self.remove.entry(key).or_default().extend(members);
            }
            Operation::RemoveMembers { key, members, .. } => {
                self.add.entry(key).or_default().extend(members);
            }
        }
    }

    fn restore(&mut self, key: SourceKey, changes: Changes) {
        let attrs = self.attrs.entry(key).or_default();
        for (attr, change) in changes {
            attrs.insert(attr, change.old);
        }
    }

    /// The users whose attribute values are set back: the state must hold
    /// their pushed attributes before [`revert`] compares with them.
    pub fn restored_users(&self) -> impl Iterator<Item = &SourceKey> {
        self.attrs.keys()
    }
}

/// The plan that undoes `undo`, what run `run` did, against `state`: users
/// first, then groups, then memberships, in the executor's order; protected
/// users and groups left out; sealed with the `config` fingerprint like any
/// plan.
pub fn revert(
    undo: &Undo,
    run: &RevertedRun,
    state: &State,
    policy: &Policy,
    config: &str,
) -> Plan {
    let mut draft = Draft::new(undo, state, run);
    draft.recreate_users();
    draft.remove_created_users(policy.remove_action);
    draft.restore_users();
    draft.groups();
    draft.memberships();
    let mut plan = draft.finish(policy);
    plan.fingerprint = fingerprint(
        config,
        state.generation,
        false,
        &plan.operations,
        &plan.skipped,
    );
    plan
}

/// A revert plan being drawn up.
struct Draft<'a> {
    undo: &'a Undo,
    state: &'a State,
    /// Why the plan removes what it removes.
    reason: String,
    ops: Vec<Operation>,
    notes: Vec<String>,
    /// What the plan leaves out and why, said after the notes.
    left_out: Vec<String>,
    /// The users the plan creates again.
    recreated: BTreeSet<&'a SourceKey>,
    /// The groups the run created that the plan deletes.
    deleted_groups: BTreeSet<&'a GroupKey>,
}

impl<'a> Draft<'a> {
    fn new(undo: &'a Undo, state: &'a State, run: &RevertedRun) -> Draft<'a> {
        Draft {
            undo,
            state,
            reason: format!("revert of run #{}", run.id),
            ops: Vec::new(),
            notes: vec![format!(
                "this plan reverts run #{} ({}, started {}); the next normal cycle applies the source again and undoes the revert, unless the source (or the mapping) is changed too",
                run.id, run.command, run.started_at
            )],
            left_out: Vec::new(),
            recreated: BTreeSet::new(),
            deleted_groups: BTreeSet::new(),
        }
    }

    fn skip(&mut self, what: String) {
        self.left_out.push(format!("left out: {what}"));
    }

    /// Users the run deleted, unless they are live again.
    fn recreate_users(&mut self) {
        let (undo, state) = (self.undo, self.state);
        for (key, (user_name, attrs)) in &undo.recreate {
            if state.live_user(key).is_some() {
                self.skip(format!("re-creating user {key}: it is live again"));
                continue;
            }
            self.recreated.insert(key);
            self.ops.push(Operation::CreateUser {
                key: key.clone(),
                user_name: user_name.clone(),
                attrs: attrs.clone(),
                name_step: None,
            });
        }
        if !self.recreated.is_empty() {
            self.notes.push(format!(
                "{} user(s) the run deleted are created again, with new SCIM ids",
                self.recreated.len()
            ));
        }
    }

    /// Users the run created, removed per `remove_action`.
    fn remove_created_users(&mut self, remove_action: RemoveAction) {
        let (undo, state) = (self.undo, self.state);
        for key in &undo.remove_created {
            if undo.recreate.contains_key(key) {
                continue;
            }
            let Some(user) = state.live_user(key) else {
                self.skip(format!(
                    "removing user {key} the run created: it is already removed"
                ));
                continue;
            };
            let (key, user_name, scim_id, reason) = (
                key.clone(),
                user.user_name.clone(),
                user.scim_id.to_scim_id(),
                self.reason.clone(),
            );
            self.ops.push(match remove_action {
                RemoveAction::Delete => Operation::DeleteUser {
                    key,
                    user_name,
                    scim_id,
                    reason,
                    name_step: None,
                },
                RemoveAction::Disable => Operation::DisableUser {
                    key,
                    user_name,
                    scim_id,
                    reason,
                    name_step: None,
                },
            });
        }
    }

    /// Users the run changed, enabled or disabled: their old values and
    /// status back, where they differ now.
    fn restore_users(&mut self) {
        let (undo, state) = (self.undo, self.state);
        let touched: BTreeSet<&SourceKey> = undo
            .attrs
            .keys()
            .chain(&undo.enable)
            .chain(&undo.disable)
            .filter(|k| !undo.remove_created.contains(*k) && !undo.recreate.contains_key(*k))
            .collect();
        for key in touched {
            let Some(user) = state.live_user(key) else {
                self.skip(format!("user {key}: removed since"));
                continue;
            };
            let current = user.attrs.clone().unwrap_or_default();
            let changes: Changes = undo
                .attrs
                .get(key)
                .into_iter()
                .flatten()
                .filter(|(a, old)| current.get(*a) != old.as_deref())
                .map(|(a, old)| {
                    (
                        *a,
                        Change {
                            old: current.get(a).map(str::to_owned),
                            new: old.clone(),
                        },
                    )
                })
                .collect();
            let user_name = changes
                .get(&UserAttr::UserName)
                .and_then(|c| c.new.as_deref())
                .map(UserName::new)
                .unwrap_or_else(|| user.user_name.clone());
            let enable = undo.enable.contains(key) && user.status == Status::Disabled;
            let disable = undo.disable.contains(key) && user.status == Status::Active;
            if enable {
                self.ops.push(Operation::EnableUser {
                    key: key.clone(),
                    user_name: user_name.clone(),
                    scim_id: user.scim_id.to_scim_id(),
                    changes,
                });
            } else if !changes.is_empty() {
                self.ops.push(Operation::UpdateUser {
                    key: key.clone(),
                    user_name: user_name.clone(),
                    scim_id: user.scim_id.to_scim_id(),
                    changes,
                    name_step: None,
                });
            }
            if disable {
                self.ops.push(Operation::DisableUser {
                    key: key.clone(),
                    user_name,
                    scim_id: user.scim_id.to_scim_id(),
                    reason: self.reason.clone(),
                    name_step: None,
                });
            }
        }
    }

    /// Groups the run deleted created again, those it created deleted, those
    /// it renamed named back.
    fn groups(&mut self) {
        let (undo, state) = (self.undo, self.state);
        for (key, display_name) in &undo.create_groups {
            if state.live_group(key).is_some() {
                self.skip(format!("re-creating group {key}: it is live again"));
                continue;
            }
            self.ops.push(Operation::CreateGroup {
                key: key.clone(),
                display_name: display_name.clone(),
            });
        }
        if !undo.create_groups.is_empty() {
            self.notes
                .push("groups the run deleted are created again, with new SCIM ids".into());
        }
        for key in &undo.delete_created_groups {
            if undo.create_groups.contains_key(key) {
                continue;
            }
            let Some(group) = state.live_group(key) else {
                self.skip(format!(
                    "deleting group {key} the run created: it is already removed"
                ));
                continue;
            };
            self.deleted_groups.insert(key);
            self.ops.push(Operation::DeleteGroup {
                key: key.clone(),
                scim_id: group.scim_id.clone(),
                display_name: group.display_name.clone(),
                reason: self.reason.clone(),
            });
        }
        for (key, old_name) in &undo.rename_back {
            match state.live_group(key) {
                Some(group) if group.display_name != *old_name => {
                    self.ops.push(Operation::UpdateGroup {
                        key: key.clone(),
                        scim_id: group.scim_id.clone(),
                        display_name: old_name.clone(),
                        old_display_name: group.display_name.clone(),
                    })
                }
                Some(_) => {}
                None => self.skip(format!("renaming group {key} back: it is removed")),
            }
        }
    }

    /// Members the run added removed, those it removed (or deleted with a
    /// user or group) added back.
    fn memberships(&mut self) {
        let (undo, state) = (self.undo, self.state);
        let group_name = |key: &GroupKey| {
            state
                .live_group(key)
                .map(|g| g.display_name.clone())
                .or_else(|| undo.create_groups.get(key).cloned())
        };
        for (key, members) in &undo.add {
            let Some(display_name) = group_name(key) else {
                self.skip(format!("adding members back to group {key}: it is removed"));
                continue;
            };
            let pushed = state.memberships.get(key);
            let members: Vec<SourceKey> = members
                .iter()
                .filter(|m| state.live_user(m).is_some() || self.recreated.contains(m))
                .filter(|m| {
                    !pushed.is_some_and(|p| p.contains(*m)) || undo.create_groups.contains_key(key)
                })
                .cloned()
                .collect();
            if !members.is_empty() {
                self.ops.push(Operation::AddMembers {
                    key: key.clone(),
                    display_name,
                    members,
                });
            }
        }
        for (key, members) in &undo.remove {
            if self.deleted_groups.contains(key) {
                continue;
            }
            let (Some(group), Some(pushed)) = (state.live_group(key), state.memberships.get(key))
            else {
                continue;
            };
            let members: Vec<SourceKey> = members
                .iter()
                .filter(|m| pushed.contains(*m))
                .cloned()
                .collect();
            if !members.is_empty() {
                self.ops.push(Operation::RemoveMembers {
                    key: key.clone(),
                    display_name: group.display_name.clone(),
                    members,
                    dangling: Vec::new(),
                    name_step: None,
                });
            }
        }
    }

    /// The plan, in the executor's order, less what touches a protected user
    /// or group: a revert never changes those either.
    fn finish(self, policy: &Policy) -> Plan {
        let Draft {
            state,
            mut ops,
            mut notes,
            left_out,
            ..
        } = self;
        notes.extend(left_out);
        ops.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        let (kept, protected): (Vec<Operation>, Vec<Operation>) =
            ops.into_iter().partition(|op| !policy.protects(op));
        for op in &protected {
            notes.push(format!(
                "left out: {} {:?}: protected by policy.protect",
                op.name(),
                op.display_subject()
            ));
        }
        // Nor is anything whose action is switched off (`policy.actions`).
        let (kept, skipped) = policy.actions.split(kept);
        let member_names = MemberNames::of(
            kept.iter().chain(skipped.iter().map(|s| &s.op)),
            None,
            state,
        );
        Plan {
            fingerprint: String::new(),
            full: false,
            summary: Summary::of(&kept),
            operations: kept,
            skipped,
            warnings: notes,
            ignored_members: 0,
            source_users: 0,
            managed_users: state.managed_users() as u64,
            managed_memberships: state.managed_memberships() as u64,
            observed: Vec::new(),
            held_groups: 0,
            member_names,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttrHash, Ownership, ScimId, StateGroup, StateUser};

    fn live_user(state: &mut State, key: &str, status: Status, title: &str) {
        let attrs = UserAttrs::from([
            (UserAttr::UserName, format!("{key}@example.com")),
            (UserAttr::Title, title.to_string()),
        ]);
        state.users.insert(
            SourceKey::new(key),
            StateUser {
                scim_id: ScimId::new(format!("id-{key}")).into(),
                user_name: UserName::new(format!("{key}@example.com")),
                hash: AttrHash::of(&attrs, &BTreeSet::new()),
                status,
                ownership: Ownership::Created,
                attrs: Some(Box::new(attrs)),
            },
        );
    }

    const RUN: RevertedRun<'static> = RevertedRun {
        id: 7,
        command: "sync",
        started_at: "2026-01-01T00:00:00Z",
    };

    #[test]
    fn each_kind_of_operation_is_undone_against_the_state_as_it_is_now() {
        let mut state = State::default();
        live_user(&mut state, "dis", Status::Disabled, "Engineer");
        live_user(&mut state, "upd", Status::Active, "Lead");
        live_user(&mut state, "new", Status::Active, "Intern");
        live_user(&mut state, "gone", Status::Removed, "Engineer");
        state.groups.insert(
            GroupKey::new("eng"),
            StateGroup {
                scim_id: ScimId::new("id-eng"),
                display_name: GroupName::new("Engineering"),
                status: Status::Active,
                ownership: Ownership::Created,
            },
        );
        state.memberships.insert(
            GroupKey::new("eng"),
            BTreeSet::from([SourceKey::new("new")]),
        );
        let user_op = |key: &str| {
            (
                SourceKey::new(key),
                UserName::new(format!("{key}@example.com")),
                ScimId::new(format!("id-{key}")),
            )
        };
        let mut undo = Undo::default();
        // Newest first, as `revert` folds them.
        let (key, user_name, scim_id) = user_op("gone");
        undo.fold(
            Operation::DeleteUser {
                key,
                user_name,
                scim_id,
                reason: "not in the source".into(),
                name_step: None,
            },
            Destroyed {
                attrs: Some(UserAttrs::from([(
                    UserAttr::UserName,
                    "gone@example.com".to_string(),
                )])),
                groups: vec![GroupKey::new("eng")],
                members: Vec::new(),
            },
        );
        undo.fold(
            Operation::AddMembers {
                key: GroupKey::new("eng"),
                display_name: GroupName::new("Engineering"),
                members: vec![SourceKey::new("new")],
            },
            Destroyed::default(),
        );
        let (key, user_name, _) = user_op("new");
        undo.fold(
            Operation::CreateUser {
                key,
                user_name,
                attrs: UserAttrs::new(),
                name_step: None,
            },
            Destroyed::default(),
        );
        let (key, user_name, scim_id) = user_op("upd");
        undo.fold(
            Operation::UpdateUser {
                key,
                user_name,
                scim_id,
                changes: Changes::from([(
                    UserAttr::Title,
                    Change {
                        old: Some("Engineer".into()),
                        new: Some("Lead".into()),
                    },
                )]),
                name_step: None,
            },
            Destroyed::default(),
        );
        let (key, user_name, scim_id) = user_op("dis");
        undo.fold(
            Operation::DisableUser {
                key,
                user_name,
                scim_id,
                reason: "left".into(),
                name_step: None,
            },
            Destroyed::default(),
        );

        let policy = Policy {
            remove_action: RemoveAction::Disable,
            ..Policy::default()
        };
        let plan = revert(&undo, &RUN, &state, &policy, "config");
        let names = crate::plan::testkit::names(&plan);
        assert_eq!(
            names,
            [
                "create_user gone",
                "enable_user dis",
                "update_user upd",
                "add_members eng",
                "remove_members eng",
                "disable_user new",
            ]
        );
        let Operation::UpdateUser { changes, .. } = &plan.operations[2] else {
            panic!("{:?}", plan.operations[2]);
        };
        assert_eq!(
            changes[&UserAttr::Title],
            Change {
                old: Some("Lead".into()),
                new: Some("Engineer".into())
            }
        );
        assert!(plan.warnings[0].contains("the next normal cycle applies the source again"));
        assert!(plan.warnings.iter().any(|w| w.contains("new SCIM ids")));
    }

    #[test]
    fn a_protected_user_is_left_out_and_said_so() {
        let mut state = State::default();
        live_user(&mut state, "boss", Status::Disabled, "CEO");
        let mut undo = Undo::default();
        undo.fold(
            Operation::DisableUser {
                key: SourceKey::new("boss"),
                user_name: UserName::new("boss@example.com"),
                scim_id: ScimId::new("id-boss"),
                reason: "left".into(),
                name_step: None,
            },
            Destroyed::default(),
        );
        let policy = Policy {
            protected_users: BTreeSet::from([UserName::new("boss@example.com")]),
            ..Policy::default()
        };
        let plan = revert(&undo, &RUN, &state, &policy, "config");
        assert!(plan.operations.is_empty(), "{:?}", plan.operations);
        assert_eq!(plan.summary, Summary::default());
        assert!(
            plan.warnings
                .iter()
                .any(|w| w
                    == "left out: enable_user \"boss@example.com\": protected by policy.protect"),
            "{:?}",
            plan.warnings
        );
    }
}
