//! The rules the planner and the guards follow, compiled from the config's
//! `policy:` section (and what the target's flavour implies).

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::Operation;
use super::actions::Actions;
use crate::model::{Domain, GroupName, UserName};

/// What leaving the directory means for a user (Entra and PingOne's REMOVE_ACTION).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RemoveAction {
    /// PATCH `active=false`: reversible.
    Disable,
    /// SCIM DELETE: on Atlassian, deactivates the account and unlinks the record.
    Delete,
}

/// What a user disabled in the source (its mapped `active` false) becomes in
/// the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DisabledAction {
    /// Disabled (`active=false`), whatever `remove_action` says: reversible,
    /// as Entra's provisioning does.
    #[default]
    Disable,
    /// As a user who left: under `remove_action: delete` deleted (PingOne's
    /// behaviour with REMOVE_ACTION Delete), under `disable` disabled.
    RemoveAction,
}

/// Whether a new source key whose userName belongs to the account of a user who
/// left the source may take that account over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReuseAccounts {
    /// Never: the create fails for the new user, naming both keys, until the
    /// address is free in the target (with `remove_action: delete` the
    /// leaver's account is deleted first, in the same plan, and the create
    /// then succeeds).
    #[default]
    Never,
    /// Once the leaver's removal is done, the new key takes over its account
    /// (same SCIM id, re-enabled, attributes and externalId of the new user).
    AfterRemoval,
}

/// What to do when a group's name changes in the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRename {
    /// Rename in place where the target allows it; on Atlassian keep the old name
    /// and warn.
    Keep,
    /// Create the group under its new name, move the members, delete the old one.
    Recreate,
}

/// The largest number of removals (disables and deletes of users, deletes of
/// groups; or removals of group members) one cycle may make without
/// `--allow-deletes`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RemovalLimit {
    Count(u64),
    /// A percentage of the users (memberships) idsync manages.
    Percent(f64),
}

impl RemovalLimit {
    /// The limit for a directory of `managed` users.
    pub fn resolve(self, managed: u64) -> u64 {
        match self {
            RemovalLimit::Count(n) => n,
            RemovalLimit::Percent(p) => ((managed as f64) * p / 100.0).floor() as u64,
        }
    }
}

impl fmt::Display for RemovalLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemovalLimit::Count(n) => write!(f, "{n}"),
            RemovalLimit::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// The rules the planner and guards follow.
#[derive(Clone, Debug)]
pub struct Policy {
    pub remove_action: RemoveAction,
    pub max_removals: RemovalLimit,
    /// The largest number of group memberships one cycle may remove without
    /// `--allow-deletes` (a percentage is of the memberships idsync manages).
    pub max_member_removals: RemovalLimit,
    pub provision_groups: bool,
    pub delete_groups: bool,
    pub on_rename: OnRename,
    pub skip_out_of_scope_deletions: bool,
    /// userNames idsync never changes.
    pub protected_users: BTreeSet<UserName>,
    /// Group names idsync never changes.
    pub protected_groups: BTreeSet<GroupName>,
    /// Largest number of members per membership PATCH.
    pub member_chunk: usize,
    /// The target renames groups in place (generic SCIM) or not (Atlassian).
    pub target_renames_groups: bool,
    /// Email domains the target accepts (Atlassian: the organization's verified
    /// domains); empty = any. Users outside them are skipped with a warning
    /// instead of failing.
    pub verified_domains: BTreeSet<Domain>,
    /// Whether a reused address may take over a leaver's account.
    pub reuse_accounts: ReuseAccounts,
    /// What a user disabled in the source becomes.
    pub disabled_action: DisabledAction,
    /// Which kinds of change may be sent (`policy.actions`).
    pub actions: Actions,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            remove_action: RemoveAction::Disable,
            max_removals: DEFAULT_MAX_REMOVALS,
            max_member_removals: DEFAULT_MAX_MEMBER_REMOVALS,
            provision_groups: true,
            delete_groups: false,
            on_rename: OnRename::Keep,
            skip_out_of_scope_deletions: false,
            protected_users: BTreeSet::new(),
            protected_groups: BTreeSet::new(),
            member_chunk: 100,
            target_renames_groups: true,
            verified_domains: BTreeSet::new(),
            reuse_accounts: ReuseAccounts::Never,
            disabled_action: DisabledAction::Disable,
            actions: Actions::default(),
        }
    }
}

/// Five percent of the directory: enough for a normal week of leavers, small
/// enough that a broken source read cannot take a directory down with it.
pub const DEFAULT_MAX_REMOVALS: RemovalLimit = RemovalLimit::Percent(5.0);

/// Ten percent of the memberships idsync manages. On Atlassian a group
/// membership is product access, so emptying groups is a removal; but
/// memberships move more than accounts do (a leaver within `max_removals`
/// takes their memberships along, and people change teams), so the default
/// leaves twice the room `max_removals` does.
pub const DEFAULT_MAX_MEMBER_REMOVALS: RemovalLimit = RemovalLimit::Percent(10.0);

/// A percentage `max_member_removals` never allows fewer removals than this: in
/// a small directory (40 memberships) 10% would stop a cycle in which two
/// people change teams. A count is taken as written.
pub const MEMBER_REMOVALS_FLOOR: u64 = 10;

/// A percentage `max_removals` never allows fewer removals than this: in a
/// small directory 5% is nothing (5% of 19 users is 0), and the first leaver
/// would stop every cycle. A count is taken as written.
pub const REMOVALS_FLOOR: u64 = 3;

impl RemovalLimit {
    /// The floor this limit has: `floor` for a percentage, none for a count.
    pub fn floor(self, floor: u64) -> Option<u64> {
        matches!(self, RemovalLimit::Percent(_)).then_some(floor)
    }

    /// The limit for `managed` objects, a percentage never below `floor`.
    pub fn resolve_with_floor(self, managed: u64, floor: u64) -> u64 {
        match self {
            RemovalLimit::Count(n) => n,
            percent => percent.resolve(managed).max(floor),
        }
    }
}

impl Policy {
    /// The most users disabled or deleted and groups deleted one cycle may
    /// make, for `managed` users.
    pub fn removal_limit(&self, managed: u64) -> u64 {
        self.max_removals
            .resolve_with_floor(managed, REMOVALS_FLOOR)
    }

    /// The most memberships one cycle may remove, out of `managed`.
    pub fn member_removal_limit(&self, managed: u64) -> u64 {
        self.max_member_removals
            .resolve_with_floor(managed, MEMBER_REMOVALS_FLOOR)
    }

    /// Whether a user disabled in the source is deleted (as a leaver is under
    /// `remove_action: delete`) rather than disabled.
    pub fn deletes_disabled_users(&self) -> bool {
        self.disabled_action == DisabledAction::RemoveAction
            && self.remove_action == RemoveAction::Delete
    }

    /// Whether `policy.protect` names this user: idsync never changes it.
    pub fn protects_user(&self, name: &UserName) -> bool {
        self.protected_users.contains(name)
    }

    /// Whether `policy.protect` names this group: idsync never changes it.
    pub fn protects_group(&self, name: &GroupName) -> bool {
        self.protected_groups.contains(name)
    }

    /// Whether `op` touches a protected user or group, under any name it
    /// carries (a rename, under its old name too).
    pub fn protects(&self, op: &Operation) -> bool {
        match op {
            Operation::AdoptUser { user_name, .. }
            | Operation::CreateUser { user_name, .. }
            | Operation::UpdateUser { user_name, .. }
            | Operation::EnableUser { user_name, .. }
            | Operation::DisableUser { user_name, .. }
            | Operation::DeleteUser { user_name, .. } => self.protects_user(user_name),
            Operation::UpdateGroup {
                display_name,
                old_display_name,
                ..
            } => self.protects_group(display_name) || self.protects_group(old_display_name),
            Operation::AdoptGroup { display_name, .. }
            | Operation::CreateGroup { display_name, .. }
            | Operation::DeleteGroup { display_name, .. }
            | Operation::AddMembers { display_name, .. }
            | Operation::RemoveMembers { display_name, .. } => self.protects_group(display_name),
        }
    }
}
