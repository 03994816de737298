//! Planning: a pure function from one [`PlanningInput`] (the desired snapshot,
//! the last pushed state, for `--full` the target's contents, the policy) to a
//! [`Plan`] — the operations that make the target match, in a stable order
//! (executor phase, then key). No I/O, no clock: the same input always gives the
//! same plan.
//!
//! It never touches an object the state does not record as created or adopted by
//! idsync, and an email or userName change is an update of the same SCIM id.
//! When a userName passes from one managed user to another (a leaver's address
//! reused, a swap), `names` orders the work and records the decision on the
//! operations ([`NameStep`]).
//! `--full` folds what the target really holds into the state first
//! (`reconcile`), so the same planner also corrects hand-made drift. The guards
//! (`guard`) check a plan before anyone acts on it; `verify` checks a saved plan
//! against the state it is applied to. `config` reads the `policy:` section of
//! the configuration into a [`Policy`]; `actions` holds its per-action
//! switches, and sets aside what they switch off as [`Skipped`]. `revert`
//! plans the undoing of a past run's operations, against the state as it is now.

mod actions;
pub mod audit;
pub(crate) mod config;
pub(crate) mod guard;
mod input;
mod member_names;
mod names;
mod planner;
mod policy;
mod reconcile;
mod revert;
mod verify;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{
    GroupKey, GroupName, OpKind, ScimId, SourceKey, StateChange, Status, UserAttr, UserAttrs,
    UserName,
};

pub use actions::{Action, Actions, GroupActions, Skipped, UserActions};
pub use input::{PlanOptions, PlanningInput};
pub use member_names::MemberNames;
pub use names::{claimed_name, released_name, temporary_user_name};
pub use planner::{diff, fingerprint, plan};
pub use policy::{
    DEFAULT_MAX_MEMBER_REMOVALS, DEFAULT_MAX_REMOVALS, DisabledAction, MEMBER_REMOVALS_FLOOR,
    OnRename, Policy, REMOVALS_FLOOR, RemovalLimit, RemoveAction, ReuseAccounts,
};
pub use revert::{Destroyed, RevertedRun, Undo, revert};
pub use verify::{Mismatch, PlanMismatch, verify_saved};

/// One attribute's change: `old` as last pushed, `new` as desired (`None` =
/// absent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub old: Option<String>,
    pub new: Option<String>,
}

pub type Changes = BTreeMap<UserAttr, Change>;

/// How `--full` matched an existing target account to a source user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MatchedBy {
    UserName,
    ExternalId,
    DisplayName,
}

/// How an operation takes part in moving a userName from one managed user to
/// another within one plan (a leaver's address given to a new hire, two users
/// swapping addresses). Shown in the plan, so a reviewer sees the decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum NameStep {
    /// Runs before the creates (the release phase): frees the userName that
    /// `for_key` takes later in this plan.
    Frees { for_key: SourceKey },
    /// Breaks a cycle of renames: the user passes through a temporary userName
    /// so that `for_key` can take this one; a later update gives the final name.
    Temporary { for_key: SourceKey },
    /// `policy.reuse_accounts: after_removal`: the new key takes over the account
    /// of `from` (gone from the source) once its removal is done — a PATCH of
    /// that SCIM id, not a POST.
    TakesOver { from: SourceKey, scim_id: ScimId },
    /// The userName belongs to `holder`'s account (in `status`), which keeps it:
    /// the create (`policy.reuse_accounts: never`) or rename fails for this user
    /// without being sent.
    Refused { holder: SourceKey, status: Status },
}

fn no_step(step: &Option<NameStep>) -> bool {
    step.is_none()
}

/// A create's attributes in the plan's `changes` form: every value new.
mod created {
    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Change;
    use crate::model::{UserAttr, UserAttrs};

    #[derive(Serialize)]
    struct New<'a> {
        old: Option<&'a str>,
        new: &'a str,
    }

    pub fn serialize<S: Serializer>(attrs: &UserAttrs, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (attr, value) in attrs {
            map.serialize_entry(
                &attr,
                &New {
                    old: None,
                    new: value,
                },
            )?;
        }
        map.end()
    }

    /// A change that is not new (an `old` value, or no `new` one) does not
    /// describe a create: refused, not guessed at.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<UserAttrs, D::Error> {
        let changes = std::collections::BTreeMap::<UserAttr, Change>::deserialize(deserializer)?;
        let mut pairs = Vec::with_capacity(changes.len());
        for (attr, change) in changes {
            match change {
                Change {
                    old: None,
                    new: Some(value),
                } => pairs.push((attr, value)),
                _ => {
                    return Err(serde::de::Error::custom(format!(
                        "a create's `{attr}` must have \"old\": null and a \"new\" value"
                    )));
                }
            }
        }
        Ok(pairs.into_iter().collect())
    }
}

/// One step of a plan. Operations name objects by source key; SCIM ids of objects
/// created earlier in the same run are resolved by the executor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Operation {
    /// `--full` only: an existing target account becomes managed by idsync, as
    /// the target holds it (`attrs`, `active`); updates later in the plan bring
    /// it in line.
    AdoptUser {
        key: SourceKey,
        #[serde(rename = "userName")]
        user_name: UserName,
        scim_id: ScimId,
        matched_by: MatchedBy,
        attrs: UserAttrs,
        active: bool,
    },
    AdoptGroup {
        key: GroupKey,
        #[serde(rename = "displayName")]
        display_name: GroupName,
        scim_id: ScimId,
    },
    CreateUser {
        key: SourceKey,
        #[serde(rename = "userName")]
        user_name: UserName,
        /// The new user's attributes, as a copy of the desired ones (one
        /// allocation). In plan JSON: `changes`, each `{"old": null, "new": …}`,
        /// the same form as an update's.
        #[serde(rename = "changes", with = "created")]
        attrs: UserAttrs,
        #[serde(default, skip_serializing_if = "no_step")]
        name_step: Option<NameStep>,
    },
    UpdateUser {
        key: SourceKey,
        #[serde(rename = "userName")]
        user_name: UserName,
        scim_id: ScimId,
        changes: Changes,
        #[serde(default, skip_serializing_if = "no_step")]
        name_step: Option<NameStep>,
    },
    /// Re-activates a disabled user (same SCIM id), with any attribute changes.
    EnableUser {
        key: SourceKey,
        #[serde(rename = "userName")]
        user_name: UserName,
        scim_id: ScimId,
        changes: Changes,
    },
    DisableUser {
        key: SourceKey,
        #[serde(rename = "userName")]
        user_name: UserName,
        scim_id: ScimId,
        reason: String,
        #[serde(default, skip_serializing_if = "no_step")]
        name_step: Option<NameStep>,
    },
    DeleteUser {
        key: SourceKey,
        #[serde(rename = "userName")]
        user_name: UserName,
        scim_id: ScimId,
        reason: String,
        #[serde(default, skip_serializing_if = "no_step")]
        name_step: Option<NameStep>,
    },
    CreateGroup {
        key: GroupKey,
        #[serde(rename = "displayName")]
        display_name: GroupName,
    },
    /// Renames a group in place (targets that allow it).
    UpdateGroup {
        key: GroupKey,
        scim_id: ScimId,
        #[serde(rename = "displayName")]
        display_name: GroupName,
        old_display_name: GroupName,
    },
    DeleteGroup {
        key: GroupKey,
        scim_id: ScimId,
        #[serde(rename = "displayName")]
        display_name: GroupName,
        reason: String,
    },
    AddMembers {
        key: GroupKey,
        #[serde(rename = "displayName")]
        display_name: GroupName,
        members: Vec<SourceKey>,
    },
    RemoveMembers {
        key: GroupKey,
        #[serde(rename = "displayName")]
        display_name: GroupName,
        members: Vec<SourceKey>,
        /// `--full` only: member values the target stores that no user has
        /// (a deleted user's id some servers keep), removed as stored.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        dangling: Vec<String>,
        #[serde(default, skip_serializing_if = "no_step")]
        name_step: Option<NameStep>,
    },
}

/// The executor's phases, in dependency order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Adopt,
    /// Frees userNames that creates and renames later in the plan take: the
    /// leavers' removals (and their membership removals), renames away, and
    /// the temporary names that break swaps.
    Release,
    CreateUsers,
    UpdateUsers,
    CreateGroups,
    UpdateGroups,
    AddMembers,
    RemoveMembers,
    RemoveUsers,
    DeleteGroups,
}

impl Operation {
    pub fn phase(&self) -> Phase {
        if matches!(
            self.name_step(),
            Some(NameStep::Frees { .. } | NameStep::Temporary { .. })
        ) {
            return Phase::Release;
        }
        match self {
            Operation::AdoptUser { .. } | Operation::AdoptGroup { .. } => Phase::Adopt,
            Operation::CreateUser { .. } => Phase::CreateUsers,
            Operation::UpdateUser { .. } | Operation::EnableUser { .. } => Phase::UpdateUsers,
            Operation::CreateGroup { .. } => Phase::CreateGroups,
            Operation::UpdateGroup { .. } => Phase::UpdateGroups,
            Operation::AddMembers { .. } => Phase::AddMembers,
            Operation::RemoveMembers { .. } => Phase::RemoveMembers,
            Operation::DisableUser { .. } | Operation::DeleteUser { .. } => Phase::RemoveUsers,
            Operation::DeleteGroup { .. } => Phase::DeleteGroups,
        }
    }

    /// The operation's part in moving a userName between users, if any.
    pub fn name_step(&self) -> Option<&NameStep> {
        match self {
            Operation::CreateUser { name_step, .. }
            | Operation::UpdateUser { name_step, .. }
            | Operation::DisableUser { name_step, .. }
            | Operation::DeleteUser { name_step, .. }
            | Operation::RemoveMembers { name_step, .. } => name_step.as_ref(),
            _ => None,
        }
    }

    /// Which kind of operation this is.
    pub fn kind(&self) -> OpKind {
        match self {
            Operation::AdoptUser { .. } => OpKind::AdoptUser,
            Operation::AdoptGroup { .. } => OpKind::AdoptGroup,
            Operation::CreateUser { .. } => OpKind::CreateUser,
            Operation::UpdateUser { .. } => OpKind::UpdateUser,
            Operation::EnableUser { .. } => OpKind::EnableUser,
            Operation::DisableUser { .. } => OpKind::DisableUser,
            Operation::DeleteUser { .. } => OpKind::DeleteUser,
            Operation::CreateGroup { .. } => OpKind::CreateGroup,
            Operation::UpdateGroup { .. } => OpKind::UpdateGroup,
            Operation::DeleteGroup { .. } => OpKind::DeleteGroup,
            Operation::AddMembers { .. } => OpKind::AddMembers,
            Operation::RemoveMembers { .. } => OpKind::RemoveMembers,
        }
    }

    /// The plan-JSON name of the operation.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The user or group the operation is about, by its source key.
    pub fn subject(&self) -> Subject<'_> {
        match self {
            Operation::AdoptUser { key, .. }
            | Operation::CreateUser { key, .. }
            | Operation::UpdateUser { key, .. }
            | Operation::EnableUser { key, .. }
            | Operation::DisableUser { key, .. }
            | Operation::DeleteUser { key, .. } => Subject::User(key),
            Operation::AdoptGroup { key, .. }
            | Operation::CreateGroup { key, .. }
            | Operation::UpdateGroup { key, .. }
            | Operation::DeleteGroup { key, .. }
            | Operation::AddMembers { key, .. }
            | Operation::RemoveMembers { key, .. } => Subject::Group(key),
        }
    }

    /// The user's key, for an operation on a user.
    pub fn user_key(&self) -> Option<&SourceKey> {
        self.subject().user()
    }

    /// The userName, for an operation on a user.
    pub fn user_name(&self) -> Option<&UserName> {
        match self {
            Operation::AdoptUser { user_name, .. }
            | Operation::CreateUser { user_name, .. }
            | Operation::UpdateUser { user_name, .. }
            | Operation::EnableUser { user_name, .. }
            | Operation::DisableUser { user_name, .. }
            | Operation::DeleteUser { user_name, .. } => Some(user_name),
            _ => None,
        }
    }

    /// The name people know the object by: the userName or group name.
    pub fn display_subject(&self) -> &str {
        if let Some(user_name) = self.user_name() {
            return user_name.as_str();
        }
        match self {
            Operation::AdoptGroup { display_name, .. }
            | Operation::CreateGroup { display_name, .. }
            | Operation::UpdateGroup { display_name, .. }
            | Operation::DeleteGroup { display_name, .. }
            | Operation::AddMembers { display_name, .. }
            | Operation::RemoveMembers { display_name, .. } => display_name.as_str(),
            _ => unreachable!("every user operation has a userName"),
        }
    }

    /// Disables and deletes of users and deletes of groups: what the removal
    /// limit counts.
    pub fn is_removal(&self) -> bool {
        matches!(
            self,
            Operation::DisableUser { .. }
                | Operation::DeleteUser { .. }
                | Operation::DeleteGroup { .. }
        )
    }

    pub(crate) fn sort_key(&self) -> (Phase, Subject<'_>) {
        (self.phase(), self.subject())
    }
}

/// What an operation is about: a user or a group, by its source key. Ordered
/// by the key's text (then users before groups), as plans are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subject<'a> {
    User(&'a SourceKey),
    Group(&'a GroupKey),
}

impl<'a> Subject<'a> {
    pub fn as_str(&self) -> &'a str {
        match self {
            Subject::User(key) => key.as_str(),
            Subject::Group(key) => key.as_str(),
        }
    }

    /// The user's key, when the subject is a user.
    pub fn user(&self) -> Option<&'a SourceKey> {
        match self {
            Subject::User(key) => Some(key),
            Subject::Group(_) => None,
        }
    }
}

impl Ord for Subject<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let rank = |s: &Subject<'_>| matches!(s, Subject::Group(_));
        (self.as_str(), rank(self)).cmp(&(other.as_str(), rank(other)))
    }
}

impl PartialOrd for Subject<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Counts per operation kind, with the keys of the plan JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub create_users: u64,
    pub update_users: u64,
    pub disable_users: u64,
    pub delete_users: u64,
    pub create_groups: u64,
    pub update_groups: u64,
    pub delete_groups: u64,
    pub add_members: u64,
    pub remove_members: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub enable_users: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub adopt_users: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub adopt_groups: u64,
    /// Dangling members removed (values no user has): not memberships of
    /// anyone, so not weighed by the membership removal limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub remove_dangling_members: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Summary {
    pub fn of(operations: &[Operation]) -> Summary {
        let mut s = Summary::default();
        for op in operations {
            match op {
                Operation::AdoptUser { .. } => s.adopt_users += 1,
                Operation::AdoptGroup { .. } => s.adopt_groups += 1,
                Operation::CreateUser { .. } => s.create_users += 1,
                Operation::UpdateUser { .. } => s.update_users += 1,
                Operation::EnableUser { .. } => {
                    s.enable_users += 1;
                    s.update_users += 1;
                }
                Operation::DisableUser { .. } => s.disable_users += 1,
                Operation::DeleteUser { .. } => s.delete_users += 1,
                Operation::CreateGroup { .. } => s.create_groups += 1,
                Operation::UpdateGroup { .. } => s.update_groups += 1,
                Operation::DeleteGroup { .. } => s.delete_groups += 1,
                Operation::AddMembers { members, .. } => s.add_members += members.len() as u64,
                Operation::RemoveMembers {
                    members, dangling, ..
                } => {
                    s.remove_members += members.len() as u64;
                    s.remove_dangling_members += dangling.len() as u64;
                }
            }
        }
        s
    }

    pub fn removals(&self) -> u64 {
        self.disable_users + self.delete_users + self.delete_groups
    }
}

/// A plan: a value, printable and serialisable, checked by the guards before the
/// executor sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Ties a saved plan to the config, mapping and state it was made from, and
    /// to its own operations.
    pub fingerprint: String,
    /// Made by `--full`: the target was read, and `observed` holds what it showed.
    #[serde(default)]
    pub full: bool,
    pub summary: Summary,
    pub operations: Vec<Operation>,
    /// Operations planned but not sent because their action is switched off
    /// (`policy.actions`), in the executor's order. Never sent; the run
    /// records each as skipped. Counted toward no removal limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Group members left out because they are not in-scope users (outside the
    /// base DN, filtered out, unknown keys).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ignored_members: u64,
    /// Source groups left unchanged this cycle (their names are in
    /// `warnings`): the cycle ends with exit 1 even when every operation succeeds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held_groups: u64,
    /// What the guards weigh: users in scope in the source, and users idsync
    /// manages. Not saved: a saved plan has been reviewed and passes no guard.
    #[serde(skip)]
    pub source_users: u64,
    #[serde(skip)]
    pub managed_users: u64,
    /// Group memberships idsync manages (pushed into live groups), for the
    /// membership removal limit.
    #[serde(skip)]
    pub managed_memberships: u64,
    /// `--full`: the state as the target really holds it (objects found missing,
    /// attributes and memberships as found), committed by the executor after the
    /// adoptions and before any other operation. Full plans are never saved.
    #[serde(skip)]
    pub observed: Vec<StateChange>,
    /// The userNames of the members the membership operations name, for
    /// people reading the plan: looked up where a plan is rendered for them
    /// (empty otherwise, and never saved).
    #[serde(skip)]
    pub member_names: MemberNames,
}

impl Plan {
    /// Nothing to send (operations skipped because their action is off may
    /// remain).
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// Every operation the plan names: those to send, then those skipped.
    pub fn planned(&self) -> impl Iterator<Item = &Operation> {
        self.operations
            .iter()
            .chain(self.skipped.iter().map(|s| &s.op))
    }

    /// Users and groups whose recorded state `--full` corrects to what the
    /// target holds.
    pub fn observed_objects(&self) -> usize {
        self.observed
            .iter()
            .filter(|c| !matches!(c, StateChange::SetMembers { .. }))
            .count()
    }
}

#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
mod tests;
