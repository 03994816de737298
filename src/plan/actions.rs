//! Per-action switches (`policy.actions`): which kinds of change idsync may
//! send, as PingFederate's provisioning options and Entra's target object
//! actions have them. Every switch is on by default. An operation whose
//! action is off is planned as [`Skipped`]: shown in the plan, recorded in the
//! run's log as skipped, counted in the run summary, and never sent.
//!
//! What a switched-off action takes along ([`Actions::split`]):
//! - a user whose create is off is not added to any group either (the adds
//!   wait with the create, which is planned again next cycle);
//! - a user whose disable or delete is off keeps its group memberships too
//!   (the account is left exactly as it is);
//! - members added to a group the plan creates go with that create
//!   (`groups.create`); membership changes of existing groups and renames are
//!   `groups.update`; re-enabling a disabled user is `users.update`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::Operation;
use crate::model::{GroupKey, SourceKey};

/// One switch of `policy.actions`, named as written under it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Action {
    #[serde(rename = "users.create")]
    CreateUsers,
    #[serde(rename = "users.update")]
    UpdateUsers,
    #[serde(rename = "users.disable")]
    DisableUsers,
    #[serde(rename = "users.delete")]
    DeleteUsers,
    #[serde(rename = "groups.create")]
    CreateGroups,
    #[serde(rename = "groups.update")]
    UpdateGroups,
    #[serde(rename = "groups.delete")]
    DeleteGroups,
}

impl Action {
    pub const ALL: [Action; 7] = [
        Action::CreateUsers,
        Action::UpdateUsers,
        Action::DisableUsers,
        Action::DeleteUsers,
        Action::CreateGroups,
        Action::UpdateGroups,
        Action::DeleteGroups,
    ];

    /// The switch's path under `policy.actions`.
    pub fn name(self) -> &'static str {
        match self {
            Action::CreateUsers => "users.create",
            Action::UpdateUsers => "users.update",
            Action::DisableUsers => "users.disable",
            Action::DeleteUsers => "users.delete",
            Action::CreateGroups => "groups.create",
            Action::UpdateGroups => "groups.update",
            Action::DeleteGroups => "groups.delete",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `policy.actions.users`: each switch on unless written `false`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserActions {
    pub create: bool,
    /// Attribute changes, renames, and re-enabling a disabled user.
    pub update: bool,
    pub disable: bool,
    pub delete: bool,
}

impl Default for UserActions {
    fn default() -> Self {
        UserActions {
            create: true,
            update: true,
            disable: true,
            delete: true,
        }
    }
}

/// `policy.actions.groups`: each switch on unless written `false`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupActions {
    /// Creating a group, with its first members.
    pub create: bool,
    /// Renames, and membership changes of existing groups.
    pub update: bool,
    pub delete: bool,
}

impl Default for GroupActions {
    fn default() -> Self {
        GroupActions {
            create: true,
            update: true,
            delete: true,
        }
    }
}

/// `policy.actions`: what idsync may send, switch by switch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Actions {
    pub users: UserActions,
    pub groups: GroupActions,
}

/// An operation planned but not sent, because its action is switched off.
/// In plan JSON: the operation's own fields, plus `"action_off"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    #[serde(flatten)]
    pub op: Operation,
    /// The switch that is off.
    pub action_off: Action,
}

impl Skipped {
    /// Why it was not sent, as the run's log records it.
    pub fn reason(&self) -> String {
        format!(
            "action off: policy.actions.{} is false; not sent",
            self.action_off
        )
    }
}

impl Actions {
    /// Whether `action` may be sent.
    pub fn allows(&self, action: Action) -> bool {
        match action {
            Action::CreateUsers => self.users.create,
            Action::UpdateUsers => self.users.update,
            Action::DisableUsers => self.users.disable,
            Action::DeleteUsers => self.users.delete,
            Action::CreateGroups => self.groups.create,
            Action::UpdateGroups => self.groups.update,
            Action::DeleteGroups => self.groups.delete,
        }
    }

    /// The switches that are off, in the order they are written.
    pub fn off(&self) -> Vec<Action> {
        Action::ALL
            .into_iter()
            .filter(|a| !self.allows(*a))
            .collect()
    }

    /// Every switch on (the default).
    pub fn all_on(&self) -> bool {
        self.off().is_empty()
    }

    /// The action `op` is, given the groups the same plan creates (members
    /// added to one of those go with its create); `None` for adoptions, which
    /// send nothing.
    pub fn action_of(op: &Operation, created: &HashSet<&GroupKey>) -> Option<Action> {
        Some(match op {
            Operation::AdoptUser { .. } | Operation::AdoptGroup { .. } => return None,
            Operation::CreateUser { .. } => Action::CreateUsers,
            Operation::UpdateUser { .. } | Operation::EnableUser { .. } => Action::UpdateUsers,
            Operation::DisableUser { .. } => Action::DisableUsers,
            Operation::DeleteUser { .. } => Action::DeleteUsers,
            Operation::CreateGroup { .. } => Action::CreateGroups,
            Operation::AddMembers { key, .. } if created.contains(key) => Action::CreateGroups,
            Operation::UpdateGroup { .. }
            | Operation::AddMembers { .. }
            | Operation::RemoveMembers { .. } => Action::UpdateGroups,
            Operation::DeleteGroup { .. } => Action::DeleteGroups,
        })
    }

    /// Splits `ops` into what may be sent and what is skipped (in the order
    /// given). A membership change is cut where some of its members wait for
    /// their own skipped create (adds) or skipped removal (removes): those
    /// members make a skipped operation of their own, under that action.
    pub fn split(&self, ops: Vec<Operation>) -> (Vec<Operation>, Vec<Skipped>) {
        if self.all_on() {
            return (ops, Vec::new());
        }
        let created: HashSet<&GroupKey> = ops
            .iter()
            .filter_map(|op| match op {
                Operation::CreateGroup { key, .. } => Some(key),
                _ => None,
            })
            .collect();
        let mut off: Vec<Option<Action>> = Vec::with_capacity(ops.len());
        // Users whose own create or removal is off, and which.
        let mut waiting: HashMap<SourceKey, Action> = HashMap::new();
        for op in &ops {
            let action = Self::action_of(op, &created).filter(|a| !self.allows(*a));
            if let (Some(a), Some(key)) = (action, op.user_key()) {
                waiting.insert(key.clone(), a);
            }
            off.push(action);
        }
        let mut kept = Vec::with_capacity(ops.len());
        let mut skipped = Vec::new();
        for (op, action) in ops.into_iter().zip(off) {
            match action {
                Some(action_off) => skipped.push(Skipped { op, action_off }),
                None if waiting.is_empty() => kept.push(op),
                None => {
                    let (op, held) = hold_members(op, &waiting);
                    kept.extend(op);
                    skipped.extend(held);
                }
            }
        }
        (kept, skipped)
    }
}

/// A membership change without the members that wait for their user's
/// skipped create (adds) or removal (removes), and those members as skipped
/// changes, one per action. Any other operation comes back as it is.
fn hold_members(
    op: Operation,
    waiting: &HashMap<SourceKey, Action>,
) -> (Option<Operation>, Vec<Skipped>) {
    let (add, members, dangling) = match &op {
        Operation::AddMembers { members, .. } => (true, members, &[][..]),
        Operation::RemoveMembers {
            members, dangling, ..
        } => (false, members, &dangling[..]),
        _ => return (Some(op), Vec::new()),
    };
    let waits = |m: &SourceKey| {
        waiting.get(m).copied().filter(|a| match a {
            Action::CreateUsers => add,
            Action::DisableUsers | Action::DeleteUsers => !add,
            _ => false,
        })
    };
    if !members.iter().any(|m| waits(m).is_some()) {
        return (Some(op), Vec::new());
    }
    let mut held: BTreeMap<Action, Vec<SourceKey>> = BTreeMap::new();
    let mut rest = Vec::new();
    for m in members {
        match waits(m) {
            Some(a) => held.entry(a).or_default().push(m.clone()),
            None => rest.push(m.clone()),
        }
    }
    let skipped = held
        .into_iter()
        .map(|(action_off, members)| Skipped {
            op: with_members(&op, members, Vec::new()),
            action_off,
        })
        .collect();
    let kept = (!rest.is_empty() || !dangling.is_empty())
        .then(|| with_members(&op, rest, dangling.to_vec()));
    (kept, skipped)
}

/// The membership change `op` with other members (and dangling values).
fn with_members(op: &Operation, members: Vec<SourceKey>, dangling: Vec<String>) -> Operation {
    match op {
        Operation::AddMembers {
            key, display_name, ..
        } => Operation::AddMembers {
            key: key.clone(),
            display_name: display_name.clone(),
            members,
        },
        Operation::RemoveMembers {
            key,
            display_name,
            name_step,
            ..
        } => Operation::RemoveMembers {
            key: key.clone(),
            display_name: display_name.clone(),
            members,
            dangling,
            name_step: name_step.clone(),
        },
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GroupName, ScimId, UserName};

    fn keys(names: &[&str]) -> Vec<SourceKey> {
        names.iter().map(|k| SourceKey::new(*k)).collect()
    }

    fn create(key: &str) -> Operation {
        Operation::CreateUser {
            key: SourceKey::new(key),
            user_name: UserName::new(format!("{key}@example.com")),
            attrs: Default::default(),
            name_step: None,
        }
    }

    fn disable(key: &str) -> Operation {
        Operation::DisableUser {
            key: SourceKey::new(key),
            user_name: UserName::new(format!("{key}@example.com")),
            scim_id: ScimId::new(format!("id-{key}")),
            reason: "not in the source".into(),
            name_step: None,
        }
    }

    fn adds(group: &str, members: &[&str]) -> Operation {
        Operation::AddMembers {
            key: GroupKey::new(group),
            display_name: GroupName::new(group),
            members: keys(members),
        }
    }

    fn removes(group: &str, members: &[&str]) -> Operation {
        Operation::RemoveMembers {
            key: GroupKey::new(group),
            display_name: GroupName::new(group),
            members: keys(members),
            dangling: Vec::new(),
            name_step: None,
        }
    }

    fn names(ops: &[Operation]) -> Vec<String> {
        ops.iter()
            .map(|op| format!("{} {}", op.name(), op.subject()))
            .collect()
    }

    fn skipped_names(skipped: &[Skipped]) -> Vec<String> {
        skipped
            .iter()
            .map(|s| format!("{} {} ({})", s.op.name(), s.op.subject(), s.action_off))
            .collect()
    }

    #[test]
    fn every_switch_is_on_by_default_and_then_nothing_is_skipped() {
        let actions = Actions::default();
        assert!(actions.all_on());
        assert!(Action::ALL.into_iter().all(|a| actions.allows(a)));
        let ops = vec![create("a"), adds("eng", &["a"]), disable("b")];
        let (kept, skipped) = actions.split(ops.clone());
        assert_eq!(kept, ops);
        assert!(skipped.is_empty());
    }

    #[test]
    fn a_skipped_create_takes_its_membership_adds_along_and_nothing_else() {
        let mut actions = Actions::default();
        actions.users.create = false;
        let ops = vec![
            create("a"),
            create("b"),
            adds("eng", &["a", "b", "c"]),
            adds("ops", &["c"]),
            removes("eng", &["a"]),
        ];
        let (kept, skipped) = actions.split(ops);
        assert_eq!(
            names(&kept),
            ["add_members eng", "add_members ops", "remove_members eng"]
        );
        let Operation::AddMembers { members, .. } = &kept[0] else {
            unreachable!()
        };
        assert_eq!(members, &keys(&["c"]));
        assert_eq!(
            skipped_names(&skipped),
            [
                "create_user a (users.create)",
                "create_user b (users.create)",
                "add_members eng (users.create)"
            ]
        );
        let Operation::AddMembers { members, .. } = &skipped[2].op else {
            unreachable!()
        };
        assert_eq!(members, &keys(&["a", "b"]));
    }

    #[test]
    fn a_skipped_removal_keeps_the_users_memberships() {
        let mut actions = Actions::default();
        actions.users.disable = false;
        let ops = vec![removes("eng", &["b", "c"]), disable("b"), disable("c")];
        let (kept, skipped) = actions.split(ops);
        assert!(kept.is_empty(), "{kept:?}");
        assert_eq!(
            skipped_names(&skipped),
            [
                "remove_members eng (users.disable)",
                "disable_user b (users.disable)",
                "disable_user c (users.disable)"
            ]
        );
    }

    #[test]
    fn members_of_a_new_group_go_with_its_create_and_others_with_groups_update() {
        let new_group = Operation::CreateGroup {
            key: GroupKey::new("new"),
            display_name: GroupName::new("new"),
        };
        let ops = vec![
            new_group.clone(),
            adds("new", &["a"]),
            adds("old", &["a"]),
            removes("old", &["b"]),
        ];
        let mut no_create = Actions::default();
        no_create.groups.create = false;
        let (kept, skipped) = no_create.split(ops.clone());
        assert_eq!(names(&kept), ["add_members old", "remove_members old"]);
        assert_eq!(
            skipped_names(&skipped),
            [
                "create_group new (groups.create)",
                "add_members new (groups.create)"
            ]
        );
        let mut no_update = Actions::default();
        no_update.groups.update = false;
        let (kept, skipped) = no_update.split(ops);
        assert_eq!(names(&kept), ["create_group new", "add_members new"]);
        assert_eq!(
            skipped_names(&skipped),
            [
                "add_members old (groups.update)",
                "remove_members old (groups.update)"
            ]
        );
    }

    #[test]
    fn a_skipped_operation_reads_back_from_its_json_with_the_switch() {
        let skipped = Skipped {
            op: disable("b"),
            action_off: Action::DisableUsers,
        };
        let json = serde_json::to_value(&skipped).unwrap();
        assert_eq!(json["op"], "disable_user");
        assert_eq!(json["key"], "b");
        assert_eq!(json["action_off"], "users.disable");
        let back: Skipped = serde_json::from_value(json).unwrap();
        assert_eq!(back, skipped);
        assert!(skipped.reason().contains("policy.actions.users.disable"));
    }
}
