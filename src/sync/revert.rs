//! `idsync revert RUN`: a reviewable plan that undoes what one run did to the
//! objects it touched, built from the run's history (each applied operation
//! is recorded with the values it changed; see the state schema's migration 5).
//!
//! Each operation is undone against the state as it is now: a user the run
//! disabled is enabled, attribute values it changed are set back, memberships
//! it added are removed and those it removed added, users and groups it
//! deleted are created again (with new SCIM ids), users and groups it created
//! are removed (users per `remove_action`), a group it renamed gets its old
//! name back. What changed again since (an object removed later, a value
//! already back) is left out, and the plan says so. The plan is saved and
//! applied like any other (`sync --plan`), with the same checks; the next
//! normal cycle applies the source again, which the plan's header says.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::config::Settings;
use crate::model::{GroupKey, GroupName, SourceKey, State, Status, UserAttr, UserAttrs, UserName};
use crate::plan::{self, Change, Changes, Operation, Plan, RemoveAction, Summary};
use crate::state::{RunRecord, StateDb};

use super::SyncError;

/// What a delete destroyed, as the executor recorded it.
#[derive(Debug, Default, Deserialize)]
struct Destroyed {
    #[serde(default)]
    attrs: Option<UserAttrs>,
    #[serde(default)]
    groups: Vec<GroupKey>,
    #[serde(default)]
    members: Vec<SourceKey>,
}

/// What run N did, folded per object (the earliest operation's old value wins).
#[derive(Default)]
struct Undo {
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

/// The revert plan of run `id`, made against the current state.
pub fn revert(settings: &Settings, id: i64) -> Result<Plan, SyncError> {
    let cannot = |reason: &str| SyncError::CannotRevert {
        run: id,
        reason: reason.to_string(),
    };
    let mut db = StateDb::open_read_only(&settings.state_path)?
        .ok_or_else(|| cannot("there is no state DB"))?;
    let run = db
        .run(id)?
        .ok_or_else(|| cannot("it is not in the run history (kept for history_days)"))?;
    if !db.records_values()? {
        return Err(cannot(
            "the state DB was written by an idsync that did not record the values each operation changed; run any sync once to upgrade it (runs before that cannot be reverted)",
        ));
    }
    let applied = db.applied_ops(id)?;
    let mut undo = Undo::default();
    for op in applied.iter().rev() {
        let Some(json) = &op.new_values else {
            return Err(cannot(&format!(
                "its operation {} {:?} was recorded without its values (before this idsync kept them)",
                op.op, op.subject
            )));
        };
        let operation: Operation = serde_json::from_str(json).map_err(|e| {
            cannot(&format!(
                "its operation {} {:?} cannot be read back: {e}",
                op.op, op.subject
            ))
        })?;
        let destroyed: Destroyed = match &op.old_values {
            Some(json) => serde_json::from_str(json).map_err(|e| {
                cannot(&format!(
                    "the old values of {} {:?} cannot be read back: {e}",
                    op.op, op.subject
                ))
            })?,
            None => Destroyed::default(),
        };
        undo.fold(operation, destroyed);
    }
    let mut state = db.load()?;
    let keys: Vec<SourceKey> = undo.attrs.keys().cloned().collect();
    db.load_attrs(&mut state, keys.iter())?;
    let mut plan = undo.into_plan(&state, settings.policy.remove_action, &run);
    // Protected users and groups are never changed, by a revert either.
    let (kept, protected): (Vec<Operation>, Vec<Operation>) = std::mem::take(&mut plan.operations)
        .into_iter()
        .partition(|op| !settings.policy.protects(op));
    for op in &protected {
        plan.warnings.push(format!(
            "left out: {} {:?}: protected by policy.protect",
            op.name(),
            op.display_subject()
        ));
    }
    plan.summary = Summary::of(&kept);
    plan.operations = kept;
    plan.fingerprint = plan::fingerprint(
        &settings.fingerprint,
        state.generation,
        false,
        &plan.operations,
    );
    Ok(plan)
}

impl Undo {
    /// Folds one applied operation in; operations come newest first, so an
    /// earlier operation's old value overwrites a later one's.
    fn fold(&mut self, op: Operation, destroyed: Destroyed) {
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

    fn into_plan(self, state: &State, remove_action: RemoveAction, run: &RunRecord) -> Plan {
        let reason = format!("revert of run #{}", run.id);
        let mut ops = Vec::new();
        let mut notes = vec![format!(
            "this plan reverts run #{} ({}, started {}); the next normal cycle applies the source again and undoes the revert, unless the source (or the mapping) is changed too",
            run.id, run.command, run.started_at
        )];
        let mut left_out: Vec<String> = Vec::new();
        let mut skipped = |what: String| left_out.push(format!("left out: {what}"));

        // Users.
        let mut recreated: BTreeSet<&SourceKey> = BTreeSet::new();
        for (key, (user_name, attrs)) in &self.recreate {
            if state.live_user(key).is_some() {
                skipped(format!("re-creating user {key}: it is live again"));
                continue;
            }
            recreated.insert(key);
            ops.push(Operation::CreateUser {
                key: key.clone(),
                user_name: user_name.clone(),
                attrs: attrs.clone(),
                name_step: None,
            });
        }
        if !recreated.is_empty() {
            notes.push(format!(
                "{} user(s) the run deleted are created again, with new SCIM ids",
                recreated.len()
            ));
        }
        for key in &self.remove_created {
            if self.recreate.contains_key(key) {
                continue;
            }
            let Some(user) = state.live_user(key) else {
                skipped(format!(
                    "removing user {key} the run created: it is already removed"
                ));
                continue;
            };
            let (key, user_name, scim_id, reason) = (
                key.clone(),
                user.user_name.clone(),
                user.scim_id.clone(),
                reason.clone(),
            );
            ops.push(match remove_action {
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
        let touched: BTreeSet<&SourceKey> = self
            .attrs
            .keys()
            .chain(&self.enable)
            .chain(&self.disable)
            .filter(|k| !self.remove_created.contains(*k) && !self.recreate.contains_key(*k))
            .collect();
        for key in touched {
            let Some(user) = state.live_user(key) else {
                skipped(format!("user {key}: removed since"));
                continue;
            };
            let current = user.attrs.clone().unwrap_or_default();
            let changes: Changes = self
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
            let enable = self.enable.contains(key) && user.status == Status::Disabled;
            let disable = self.disable.contains(key) && user.status == Status::Active;
            if enable {
                ops.push(Operation::EnableUser {
                    key: key.clone(),
                    user_name: user_name.clone(),
                    scim_id: user.scim_id.clone(),
                    changes,
                });
            } else if !changes.is_empty() {
                ops.push(Operation::UpdateUser {
                    key: key.clone(),
                    user_name: user_name.clone(),
                    scim_id: user.scim_id.clone(),
                    changes,
                    name_step: None,
                });
            }
            if disable {
                ops.push(Operation::DisableUser {
                    key: key.clone(),
                    user_name,
                    scim_id: user.scim_id.clone(),
                    reason: reason.clone(),
                    name_step: None,
                });
            }
        }

        // Groups.
        for (key, display_name) in &self.create_groups {
            if state.live_group(key).is_some() {
                skipped(format!("re-creating group {key}: it is live again"));
                continue;
            }
            ops.push(Operation::CreateGroup {
                key: key.clone(),
                display_name: display_name.clone(),
            });
        }
        if !self.create_groups.is_empty() {
            notes.push("groups the run deleted are created again, with new SCIM ids".into());
        }
        let mut deleted_groups = BTreeSet::new();
        for key in &self.delete_created_groups {
            if self.create_groups.contains_key(key) {
                continue;
            }
            let Some(group) = state.live_group(key) else {
                skipped(format!(
                    "deleting group {key} the run created: it is already removed"
                ));
                continue;
            };
            deleted_groups.insert(key);
            ops.push(Operation::DeleteGroup {
                key: key.clone(),
                scim_id: group.scim_id.clone(),
                display_name: group.display_name.clone(),
                reason: reason.clone(),
            });
        }
        for (key, old_name) in &self.rename_back {
            match state.live_group(key) {
                Some(group) if group.display_name != *old_name => {
                    ops.push(Operation::UpdateGroup {
                        key: key.clone(),
                        scim_id: group.scim_id.clone(),
                        display_name: old_name.clone(),
                        old_display_name: group.display_name.clone(),
                    })
                }
                Some(_) => {}
                None => skipped(format!("renaming group {key} back: it is removed")),
            }
        }

        // Memberships.
        let group_name = |key: &GroupKey| {
            state
                .live_group(key)
                .map(|g| g.display_name.clone())
                .or_else(|| self.create_groups.get(key).cloned())
        };
        for (key, members) in &self.add {
            let Some(display_name) = group_name(key) else {
                skipped(format!("adding members back to group {key}: it is removed"));
                continue;
            };
            let pushed = state.memberships.get(key);
            let members: Vec<SourceKey> = members
                .iter()
                .filter(|m| state.live_user(m).is_some() || recreated.contains(m))
                .filter(|m| {
                    !pushed.is_some_and(|p| p.contains(*m)) || self.create_groups.contains_key(key)
                })
                .cloned()
                .collect();
            if !members.is_empty() {
                ops.push(Operation::AddMembers {
                    key: key.clone(),
                    display_name,
                    members,
                });
            }
        }
        for (key, members) in &self.remove {
            if deleted_groups.contains(key) {
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
                ops.push(Operation::RemoveMembers {
                    key: key.clone(),
                    display_name: group.display_name.clone(),
                    members,
                    dangling: Vec::new(),
                    name_step: None,
                });
            }
        }

        notes.extend(left_out);
        ops.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        let member_names = plan::MemberNames::of(&ops, None, state);
        Plan {
            fingerprint: String::new(),
            full: false,
            summary: Summary::of(&ops),
            operations: ops,
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
                scim_id: ScimId::new(format!("id-{key}")),
                user_name: UserName::new(format!("{key}@example.com")),
                hash: AttrHash::of(&attrs, &BTreeSet::new()),
                status,
                ownership: Ownership::Created,
                attrs: Some(Box::new(attrs)),
            },
        );
    }

    fn run_record() -> RunRecord {
        RunRecord {
            id: 7,
            command: "sync".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            ended_at: None,
            exit_code: Some(crate::model::Exit::Ok),
            applied: 0,
            failed: 0,
            planned: 0,
            error: None,
        }
    }

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

        let plan = undo.into_plan(&state, RemoveAction::Disable, &run_record());
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
}
