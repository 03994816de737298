//! The planner: a pure function from the desired snapshot, the last pushed state
//! and the policy to a plan — the list of operations that makes the target match.
//! No I/O, no clock: the same inputs always give the same plan, in a stable order
//! (executor phase, then key).
//!
//! It never touches an object the state does not record as created or adopted by
//! idsync, and an email or userName change is an update of the same SCIM id.
//! `reconcile` (for `--full`) folds what the target really holds into the state
//! first, so the same planner also corrects hand-made drift.

pub mod guard;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::model::{FastHash, FastSet};

use serde::{Deserialize, Serialize};

use crate::config::{OnRename, Policy, RemoveAction};
use crate::model::{
    AttrHash, Desired, DesiredGroup, DesiredUser, GroupKey, ScimId, SourceKey, UserAttr, UserAttrs,
    fold,
};
use crate::scim::{RemoteGroup, RemoteUser};
use crate::state::{Ownership, State, StateGroup, StateUser, Status};

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

/// One step of a plan. Operations name objects by source key; SCIM ids of objects
/// created earlier in the same run are resolved by the executor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Operation {
    /// `--full` only: an existing target account becomes managed by idsync.
    AdoptUser {
        key: SourceKey,
        #[serde(rename = "userName")]
        user_name: String,
        scim_id: ScimId,
        matched_by: MatchedBy,
    },
    AdoptGroup {
        key: GroupKey,
        #[serde(rename = "displayName")]
        display_name: String,
        scim_id: ScimId,
    },
    CreateUser {
        key: SourceKey,
        #[serde(rename = "userName")]
        user_name: String,
        changes: Changes,
    },
    UpdateUser {
        key: SourceKey,
        #[serde(rename = "userName")]
        user_name: String,
        scim_id: ScimId,
        changes: Changes,
    },
    /// Re-activates a disabled user (same SCIM id), with any attribute changes.
    EnableUser {
        key: SourceKey,
        #[serde(rename = "userName")]
        user_name: String,
        scim_id: ScimId,
        changes: Changes,
    },
    DisableUser {
        key: SourceKey,
        #[serde(rename = "userName")]
        user_name: String,
        scim_id: ScimId,
        reason: String,
    },
    DeleteUser {
        key: SourceKey,
        #[serde(rename = "userName")]
        user_name: String,
        scim_id: ScimId,
        reason: String,
    },
    CreateGroup {
        key: GroupKey,
        #[serde(rename = "displayName")]
        display_name: String,
    },
    /// Renames a group in place (targets that allow it).
    UpdateGroup {
        key: GroupKey,
        scim_id: ScimId,
        #[serde(rename = "displayName")]
        display_name: String,
        old_display_name: String,
    },
    DeleteGroup {
        key: GroupKey,
        scim_id: ScimId,
        #[serde(rename = "displayName")]
        display_name: String,
        reason: String,
    },
    AddMembers {
        key: GroupKey,
        #[serde(rename = "displayName")]
        display_name: String,
        members: Vec<SourceKey>,
    },
    RemoveMembers {
        key: GroupKey,
        #[serde(rename = "displayName")]
        display_name: String,
        members: Vec<SourceKey>,
    },
}

/// The executor's phases, in dependency order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Adopt,
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

    /// The plan-JSON name of the operation.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::AdoptUser { .. } => "adopt_user",
            Operation::AdoptGroup { .. } => "adopt_group",
            Operation::CreateUser { .. } => "create_user",
            Operation::UpdateUser { .. } => "update_user",
            Operation::EnableUser { .. } => "enable_user",
            Operation::DisableUser { .. } => "disable_user",
            Operation::DeleteUser { .. } => "delete_user",
            Operation::CreateGroup { .. } => "create_group",
            Operation::UpdateGroup { .. } => "update_group",
            Operation::DeleteGroup { .. } => "delete_group",
            Operation::AddMembers { .. } => "add_members",
            Operation::RemoveMembers { .. } => "remove_members",
        }
    }

    /// The source key the operation is about.
    pub fn subject(&self) -> &str {
        match self {
            Operation::AdoptUser { key, .. }
            | Operation::CreateUser { key, .. }
            | Operation::UpdateUser { key, .. }
            | Operation::EnableUser { key, .. }
            | Operation::DisableUser { key, .. }
            | Operation::DeleteUser { key, .. } => key.as_str(),
            Operation::AdoptGroup { key, .. }
            | Operation::CreateGroup { key, .. }
            | Operation::UpdateGroup { key, .. }
            | Operation::DeleteGroup { key, .. }
            | Operation::AddMembers { key, .. }
            | Operation::RemoveMembers { key, .. } => key.as_str(),
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

    fn sort_key(&self) -> (Phase, &str) {
        (self.phase(), self.subject())
    }
}

/// Counts per operation kind, with the keys of DESIGN.md's plan JSON.
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
                Operation::RemoveMembers { members, .. } => {
                    s.remove_members += members.len() as u64
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
    /// Ties a saved plan to the config, mapping and state it was made from.
    pub fingerprint: String,
    #[serde(default)]
    pub full: bool,
    pub summary: Summary,
    pub operations: Vec<Operation>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Group members left out because they are not in-scope users (outside the
    /// base DN, filtered out, unknown keys).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ignored_members: u64,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }
}

/// Users whose attributes must be loaded from the state DB before planning:
/// those whose desired attributes hash differently from what was pushed.
pub fn keys_needing_attrs<'a>(desired: &'a Desired, state: &State) -> Vec<&'a SourceKey> {
    desired
        .users
        .iter()
        .filter(|d| match state.users.get(&d.key) {
            Some(s) if s.status != Status::Removed && s.attrs.is_none() => {
                s.hash != AttrHash::of(&d.attrs, &desired.create_only)
            }
            _ => false,
        })
        .map(|d| &d.key)
        .collect()
}

/// Makes the plan. `state` must carry the attributes of every user
/// `keys_needing_attrs` names.
pub fn plan(desired: &Desired, state: &State, policy: &Policy) -> Plan {
    let mut ops = Vec::new();
    let mut warnings = Vec::new();
    let protected_users: HashSet<&str> =
        policy.protected_users.iter().map(String::as_str).collect();
    let is_protected_user =
        |name: &str| !protected_users.is_empty() && protected_users.contains(fold(name).as_str());

    // Users that will exist in the target once the user phases ran.
    let mut present: FastSet<&SourceKey> =
        FastSet::with_capacity_and_hasher(desired.users.len(), FastHash::default());
    let mut desired_keys: FastSet<&SourceKey> =
        FastSet::with_capacity_and_hasher(desired.users.len(), FastHash::default());

    for d in &desired.users {
        desired_keys.insert(&d.key);
        let live = state
            .users
            .get(&d.key)
            .filter(|s| s.status != Status::Removed);
        if let Some(domain) = unverified_domain(d, &policy.verified_domains) {
            warnings.push(format!(
                "user {:?} ({}) skipped: its email domain {domain:?} is not in target.verified_domains",
                d.user_name(),
                d.origin
            ));
            if live.is_some() {
                present.insert(&d.key);
            }
            continue;
        }
        if is_protected_user(d.user_name()) || live.is_some_and(|s| is_protected_user(&s.user_name))
        {
            if live.is_some() {
                present.insert(&d.key);
            }
            continue;
        }
        match live {
            None => {
                if d.active {
                    ops.push(Operation::CreateUser {
                        key: d.key.clone(),
                        user_name: d.user_name().to_string(),
                        changes: d
                            .attrs
                            .iter()
                            .map(|(a, v)| {
                                (
                                    *a,
                                    Change {
                                        old: None,
                                        new: Some(v.clone()),
                                    },
                                )
                            })
                            .collect(),
                    });
                    present.insert(&d.key);
                }
            }
            Some(s) => {
                present.insert(&d.key);
                plan_existing_user(d, s, desired, &mut ops);
            }
        }
    }

    // Users we manage that the source no longer wants.
    let mut leaving: Vec<(&SourceKey, &StateUser)> = state
        .users
        .iter()
        .filter(|(k, s)| s.status != Status::Removed && !desired_keys.contains(k))
        .collect();
    leaving.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (key, s) in leaving {
        if is_protected_user(&s.user_name) {
            continue;
        }
        let out_of_scope = desired.out_of_scope.contains(key);
        if out_of_scope && policy.skip_out_of_scope_deletions {
            continue;
        }
        let reason = if out_of_scope {
            "out of scope"
        } else {
            "not in the source"
        }
        .to_string();
        match policy.remove_action {
            RemoveAction::Disable if s.status == Status::Active => {
                ops.push(Operation::DisableUser {
                    key: key.clone(),
                    user_name: s.user_name.to_string(),
                    scim_id: s.scim_id.clone(),
                    reason,
                })
            }
            RemoveAction::Disable => {}
            RemoveAction::Delete => ops.push(Operation::DeleteUser {
                key: key.clone(),
                user_name: s.user_name.to_string(),
                scim_id: s.scim_id.clone(),
                reason,
            }),
        }
    }

    if policy.provision_groups {
        plan_groups(desired, state, policy, &present, &mut ops, &mut warnings);
    }

    ops.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    Plan {
        fingerprint: String::new(),
        full: false,
        summary: Summary::of(&ops),
        operations: ops,
        warnings,
        ignored_members: desired.ignored_members as u64,
    }
}

/// The user's email domain, when a verified-domains list is set and the domain
/// is not on it.
fn unverified_domain(d: &DesiredUser, verified: &[String]) -> Option<String> {
    if verified.is_empty() {
        return None;
    }
    let email = d
        .attrs
        .get(&UserAttr::Email)
        .map(String::as_str)
        .unwrap_or(d.user_name());
    let domain = fold(email.rsplit_once('@').map_or("", |(_, d)| d));
    (!verified.contains(&domain)).then_some(domain)
}

fn plan_existing_user(d: &DesiredUser, s: &StateUser, desired: &Desired, ops: &mut Vec<Operation>) {
    // The caller loaded the pushed attributes of exactly the users whose hash
    // differs (`keys_needing_attrs`), so "not loaded" means "unchanged" and the
    // hash need not be computed a second time.
    let changes = match &s.attrs {
        Some(old) => diff(Some(old), &d.attrs, &desired.create_only),
        None => {
            debug_assert_eq!(
                s.hash,
                AttrHash::of(&d.attrs, &desired.create_only),
                "attributes of a changed user were not loaded"
            );
            Changes::new()
        }
    };
    let common = |changes| {
        (
            d.key.clone(),
            d.user_name().to_string(),
            s.scim_id.clone(),
            changes,
        )
    };
    match (s.status, d.active) {
        (Status::Disabled, true) => {
            let (key, user_name, scim_id, changes) = common(changes);
            ops.push(Operation::EnableUser {
                key,
                user_name,
                scim_id,
                changes,
            });
        }
        (Status::Active, false) => {
            if !changes.is_empty() {
                let (key, user_name, scim_id, changes) = common(changes);
                ops.push(Operation::UpdateUser {
                    key,
                    user_name,
                    scim_id,
                    changes,
                });
            }
            ops.push(Operation::DisableUser {
                key: d.key.clone(),
                user_name: d.user_name().to_string(),
                scim_id: s.scim_id.clone(),
                reason: "inactive in the source".to_string(),
            });
        }
        _ if !changes.is_empty() => {
            let (key, user_name, scim_id, changes) = common(changes);
            ops.push(Operation::UpdateUser {
                key,
                user_name,
                scim_id,
                changes,
            });
        }
        _ => {}
    }
}

/// The attribute-level difference between what was pushed and what is desired,
/// leaving out create-only attributes.
pub fn diff(old: Option<&UserAttrs>, new: &UserAttrs, create_only: &BTreeSet<UserAttr>) -> Changes {
    let empty = UserAttrs::new();
    let old = old.unwrap_or(&empty);
    let mut changes = Changes::new();
    for (attr, value) in new {
        if create_only.contains(attr) {
            continue;
        }
        if old.get(attr) != Some(value) {
            changes.insert(
                *attr,
                Change {
                    old: old.get(attr).cloned(),
                    new: Some(value.clone()),
                },
            );
        }
    }
    for (attr, value) in old {
        if !new.contains_key(attr) && !create_only.contains(attr) && *attr != UserAttr::UserName {
            changes.insert(
                *attr,
                Change {
                    old: Some(value.clone()),
                    new: None,
                },
            );
        }
    }
    changes
}

fn plan_groups(
    desired: &Desired,
    state: &State,
    policy: &Policy,
    present: &FastSet<&SourceKey>,
    ops: &mut Vec<Operation>,
    warnings: &mut Vec<String>,
) {
    let protected: HashSet<&str> = policy.protected_groups.iter().map(String::as_str).collect();
    let is_protected =
        |name: &str| !protected.is_empty() && protected.contains(fold(name).as_str());
    let no_members = BTreeSet::new();
    let mut desired_keys = HashSet::new();

    for g in &desired.groups {
        desired_keys.insert(&g.key);
        let live = state
            .groups
            .get(&g.key)
            .filter(|s| s.status != Status::Removed);
        if is_protected(&g.display_name) || live.is_some_and(|s| is_protected(&s.display_name)) {
            continue;
        }
        let mut wanted: Vec<&SourceKey> =
            g.members.iter().filter(|m| present.contains(m)).collect();
        // Mappings hand members over sorted; sorting again costs one pass then.
        wanted.sort_unstable();
        wanted.dedup();
        match live {
            None => {
                ops.push(Operation::CreateGroup {
                    key: g.key.clone(),
                    display_name: g.display_name.clone(),
                });
                push_members(ops, g, wanted.iter().copied(), true, policy.member_chunk);
            }
            Some(s) => {
                let pushed = state.memberships.get(&g.key).unwrap_or(&no_members);
                if s.display_name != g.display_name {
                    match (policy.target_renames_groups, policy.on_rename) {
                        (_, OnRename::Recreate) => {
                            ops.push(Operation::CreateGroup {
                                key: g.key.clone(),
                                display_name: g.display_name.clone(),
                            });
                            push_members(ops, g, wanted.iter().copied(), true, policy.member_chunk);
                            ops.push(Operation::DeleteGroup {
                                key: g.key.clone(),
                                scim_id: s.scim_id.clone(),
                                display_name: s.display_name.clone(),
                                reason: format!("renamed to {:?}", g.display_name),
                            });
                            continue;
                        }
                        (true, OnRename::Keep) => ops.push(Operation::UpdateGroup {
                            key: g.key.clone(),
                            scim_id: s.scim_id.clone(),
                            display_name: g.display_name.clone(),
                            old_display_name: s.display_name.clone(),
                        }),
                        (false, OnRename::Keep) => warnings.push(format!(
                            "group {:?} is now named {:?} in the source; the target cannot rename groups, so it keeps its old name (set policy.groups.on_rename: recreate to replace it)",
                            s.display_name, g.display_name
                        )),
                    }
                }
                let (adds, removes) = sorted_diff(&wanted, pushed);
                push_members(ops, g, adds.into_iter(), true, policy.member_chunk);
                push_members(ops, g, removes.into_iter(), false, policy.member_chunk);
            }
        }
    }

    if policy.delete_groups {
        for (key, s) in &state.groups {
            if s.status == Status::Removed
                || desired_keys.contains(key)
                || is_protected(&s.display_name)
            {
                continue;
            }
            ops.push(Operation::DeleteGroup {
                key: key.clone(),
                scim_id: s.scim_id.clone(),
                display_name: s.display_name.clone(),
                reason: "not in the source".to_string(),
            });
        }
    }
}

/// What to add to and remove from `pushed` to get `wanted`; both are sorted, so
/// one merge pass does it.
fn sorted_diff<'a>(
    wanted: &[&'a SourceKey],
    pushed: &'a BTreeSet<SourceKey>,
) -> (Vec<&'a SourceKey>, Vec<&'a SourceKey>) {
    let (mut adds, mut removes) = (Vec::new(), Vec::new());
    let mut want = wanted.iter().copied().peekable();
    let mut have = pushed.iter().peekable();
    loop {
        match (want.peek(), have.peek()) {
            (Some(w), Some(h)) => match w.cmp(h) {
                std::cmp::Ordering::Less => adds.extend(want.next()),
                std::cmp::Ordering::Greater => removes.extend(have.next()),
                std::cmp::Ordering::Equal => {
                    want.next();
                    have.next();
                }
            },
            (Some(_), None) => adds.extend(want.next()),
            (None, Some(_)) => removes.extend(have.next()),
            (None, None) => return (adds, removes),
        }
    }
}

/// Membership changes, chunked so each becomes one PATCH.
fn push_members<'a>(
    ops: &mut Vec<Operation>,
    g: &DesiredGroup,
    members: impl Iterator<Item = &'a SourceKey>,
    add: bool,
    chunk: usize,
) {
    let members: Vec<SourceKey> = members.cloned().collect();
    for part in members.chunks(chunk.max(1)) {
        let (key, display_name, members) = (g.key.clone(), g.display_name.clone(), part.to_vec());
        ops.push(if add {
            Operation::AddMembers {
                key,
                display_name,
                members,
            }
        } else {
            Operation::RemoveMembers {
                key,
                display_name,
                members,
            }
        });
    }
}

/// What `--full` read from the target.
#[derive(Clone, Debug, Default)]
pub struct TargetSnapshot {
    pub users: Vec<RemoteUser>,
    pub groups: Vec<RemoteGroup>,
}

/// Folds the target's real contents into the state, for `--full`: objects missing
/// from the target are marked removed (so they are created again), attributes and
/// memberships become what the target really holds (so drift is corrected), and
/// desired objects found in the target by `userName`, then `externalId` (groups:
/// `displayName`) are adopted. `state` must carry every live user's attributes.
/// Returns the rebuilt state and the adoptions, for the plan to show.
pub fn reconcile(
    desired: &Desired,
    state: &State,
    target: &TargetSnapshot,
) -> (State, Vec<Operation>) {
    let mut out = State {
        generation: state.generation,
        ..State::default()
    };
    let mut adopted = Vec::new();
    let by_id: HashMap<&str, &RemoteUser> =
        target.users.iter().map(|u| (u.id.as_str(), u)).collect();
    let desired_by_key: HashMap<&SourceKey, &DesiredUser> =
        desired.users.iter().map(|d| (&d.key, d)).collect();
    let mut claimed: HashSet<&str> = HashSet::new();

    let observe =
        |remote: &RemoteUser, pushed: Option<&UserAttrs>, wanted: Option<&DesiredUser>| {
            // Only attributes idsync manages for this user count as drift.
            let attrs: UserAttrs = remote
                .attrs
                .iter()
                .filter(|(a, _)| {
                    **a == UserAttr::UserName
                        || pushed.is_some_and(|p| p.contains_key(a))
                        || wanted.is_some_and(|w| w.attrs.contains_key(a))
                })
                .map(|(a, v)| (*a, v.clone()))
                .collect();
            (AttrHash::of(&attrs, &desired.create_only), attrs)
        };

    for (key, s) in &state.users {
        let mut user = s.clone();
        if s.status != Status::Removed {
            match by_id.get(s.scim_id.as_str()) {
                Some(remote) => {
                    claimed.insert(remote.id.as_str());
                    let (hash, attrs) =
                        observe(remote, s.attrs.as_ref(), desired_by_key.get(key).copied());
                    user.user_name = remote
                        .attrs
                        .get(&UserAttr::UserName)
                        .map(|n| n.as_str().into())
                        .unwrap_or_else(|| s.user_name.clone());
                    user.hash = hash;
                    user.attrs = Some(attrs);
                    user.status = if remote.active {
                        Status::Active
                    } else {
                        Status::Disabled
                    };
                }
                None => user.status = Status::Removed,
            }
        }
        out.users.insert(key.clone(), user);
    }

    let mut by_name: HashMap<String, &RemoteUser> = HashMap::new();
    let mut by_external: HashMap<&str, &RemoteUser> = HashMap::new();
    for u in &target.users {
        if claimed.contains(u.id.as_str()) {
            continue;
        }
        if let Some(name) = u.attrs.get(&UserAttr::UserName) {
            by_name.entry(fold(name)).or_insert(u);
        }
        if let Some(ext) = u.attrs.get(&UserAttr::ExternalId) {
            by_external.entry(ext.as_str()).or_insert(u);
        }
    }
    for d in &desired.users {
        if out
            .users
            .get(&d.key)
            .is_some_and(|s| s.status != Status::Removed)
        {
            continue;
        }
        let found = by_name
            .get(&fold(d.user_name()))
            .map(|u| (*u, MatchedBy::UserName))
            .or_else(|| {
                by_external
                    .get(d.key.as_str())
                    .map(|u| (*u, MatchedBy::ExternalId))
            });
        let Some((remote, matched_by)) = found else {
            continue;
        };
        if !claimed.insert(remote.id.as_str()) {
            continue;
        }
        let (hash, attrs) = observe(remote, None, Some(d));
        adopted.push(Operation::AdoptUser {
            key: d.key.clone(),
            user_name: d.user_name().to_string(),
            scim_id: remote.id.clone(),
            matched_by,
        });
        out.users.insert(
            d.key.clone(),
            StateUser {
                scim_id: remote.id.clone(),
                user_name: attrs
                    .get(&UserAttr::UserName)
                    .map(|n| n.as_str().into())
                    .unwrap_or_default(),
                hash,
                attrs: Some(attrs),
                status: if remote.active {
                    Status::Active
                } else {
                    Status::Disabled
                },
                ownership: Ownership::Adopted,
            },
        );
    }

    // Groups.
    let groups_by_id: HashMap<&str, &RemoteGroup> =
        target.groups.iter().map(|g| (g.id.as_str(), g)).collect();
    let mut claimed_groups: HashSet<&str> = HashSet::new();
    for (key, s) in &state.groups {
        let mut group = s.clone();
        if s.status != Status::Removed {
            match groups_by_id.get(s.scim_id.as_str()) {
                Some(remote) => {
                    claimed_groups.insert(remote.id.as_str());
                    group.display_name = remote.display_name.clone();
                    group.status = Status::Active;
                }
                None => group.status = Status::Removed,
            }
        }
        out.groups.insert(key.clone(), group);
    }
    let mut groups_by_name: HashMap<String, &RemoteGroup> = HashMap::new();
    for g in &target.groups {
        if !claimed_groups.contains(g.id.as_str()) {
            groups_by_name.entry(fold(&g.display_name)).or_insert(g);
        }
    }
    for g in &desired.groups {
        if out
            .groups
            .get(&g.key)
            .is_some_and(|s| s.status != Status::Removed)
        {
            continue;
        }
        let Some(remote) = groups_by_name.get(&fold(&g.display_name)) else {
            continue;
        };
        if !claimed_groups.insert(remote.id.as_str()) {
            continue;
        }
        adopted.push(Operation::AdoptGroup {
            key: g.key.clone(),
            display_name: remote.display_name.clone(),
            scim_id: remote.id.clone(),
        });
        out.groups.insert(
            g.key.clone(),
            StateGroup {
                scim_id: remote.id.clone(),
                display_name: remote.display_name.clone(),
                status: Status::Active,
                ownership: Ownership::Adopted,
            },
        );
    }

    // Memberships as the target holds them, for the users idsync manages.
    let key_of: HashMap<&str, &SourceKey> = out
        .users
        .iter()
        .filter(|(_, u)| u.status != Status::Removed)
        .map(|(k, u)| (u.scim_id.as_str(), k))
        .collect();
    for (key, g) in &out.groups {
        if g.status == Status::Removed {
            continue;
        }
        let Some(remote) = groups_by_id.get(g.scim_id.as_str()) else {
            continue;
        };
        let members: BTreeSet<SourceKey> = remote
            .members
            .iter()
            .filter_map(|id| key_of.get(id.as_str()).map(|k| (*k).clone()))
            .collect();
        if !members.is_empty() {
            out.memberships.insert(key.clone(), members);
        }
    }
    adopted.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    (out, adopted)
}

#[cfg(test)]
mod tests;
