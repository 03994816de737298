//! Guards: checks a plan must pass before anything is applied. An empty source,
//! removals above the configured limit, or group memberships removed above
//! theirs (on Atlassian a membership is product access) stop the cycle (exit 3)
//! with a message saying how many would be removed and how to proceed; nothing
//! is changed. A percentage limit has a floor (see [`REMOVALS_FLOOR`] and
//! [`MEMBER_REMOVALS_FLOOR`]), so a small directory can still lose a leaver.
//! Operations skipped because their action is off (`policy.actions`) are not
//! in the plan's operations, so they count toward no limit.

use super::{MEMBER_REMOVALS_FLOOR, Operation, Plan, Policy, REMOVALS_FLOOR, RemovalLimit};

/// Why a guard stopped the cycle.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GuardStop {
    #[error(
        "the source returned no users in scope, but idsync manages {managed}; refusing to remove them all"
    )]
    EmptySource { managed: u64 },
    #[error(
        "the plan removes {removals} objects ({disables} disables, {deletes} user deletes, {group_deletes} group deletes), above the limit of {limit} (max_removals {setting} of {managed} managed users{})",
        at_least(*.floor)
    )]
    TooManyRemovals {
        removals: u64,
        disables: u64,
        deletes: u64,
        group_deletes: u64,
        limit: u64,
        setting: RemovalLimit,
        managed: u64,
        /// The fewest removals a percentage allows (none for a count).
        floor: Option<u64>,
    },
    #[error(
        "the plan removes {removals} group memberships (from {groups} groups), above the limit of {limit} (max_member_removals {setting} of {managed} managed memberships{})",
        at_least(*.floor)
    )]
    TooManyMemberRemovals {
        removals: u64,
        groups: u64,
        limit: u64,
        setting: RemovalLimit,
        managed: u64,
        /// The fewest removals a percentage allows (none for a count).
        floor: Option<u64>,
    },
}

/// How a stop message names a percentage's floor.
fn at_least(floor: Option<u64>) -> String {
    floor
        .map(|n| format!(", at least {n} for a percentage"))
        .unwrap_or_default()
}

impl GuardStop {
    pub fn hint(&self) -> &'static str {
        match self {
            GuardStop::EmptySource { .. } => {
                "check the source (an empty export or a failed read looks like this); if everyone really left, run `idsync sync --allow-deletes`"
            }
            GuardStop::TooManyRemovals { .. } | GuardStop::TooManyMemberRemovals { .. } => {
                "review them with `idsync plan`; if they are right, run `idsync sync --allow-deletes`, or save the plan with `plan --out` and apply it with `sync --plan`"
            }
        }
    }
}

impl GuardStop {
    /// Whether `op` is one of the removals this stop held back.
    pub fn holds(&self, op: &Operation) -> bool {
        match self {
            GuardStop::TooManyMemberRemovals { .. } => {
                matches!(op, Operation::RemoveMembers { .. })
            }
            GuardStop::EmptySource { .. } | GuardStop::TooManyRemovals { .. } => op.is_removal(),
        }
    }
}

/// Checks `plan` against the policy. `allow_deletes` is the operator's reviewed
/// override (`--allow-deletes`, or applying a saved plan).
pub fn check(plan: &Plan, policy: &Policy, allow_deletes: bool) -> Result<(), GuardStop> {
    if allow_deletes {
        return Ok(());
    }
    let managed = plan.managed_users;
    if plan.source_users == 0 && managed > 0 {
        return Err(GuardStop::EmptySource { managed });
    }
    let s = &plan.summary;
    let removals = s.removals();
    let limit = policy.removal_limit(managed);
    if removals > limit {
        return Err(GuardStop::TooManyRemovals {
            removals,
            disables: s.disable_users,
            deletes: s.delete_users,
            group_deletes: s.delete_groups,
            limit,
            setting: policy.max_removals,
            managed,
            floor: policy.max_removals.floor(REMOVALS_FLOOR),
        });
    }
    check_member_removals(plan, policy)
}

/// Memberships removed, against `max_member_removals`.
fn check_member_removals(plan: &Plan, policy: &Policy) -> Result<(), GuardStop> {
    let removals = plan.summary.remove_members;
    let managed = plan.managed_memberships;
    let limit = policy.member_removal_limit(managed);
    if removals > limit {
        let mut groups: Vec<_> = plan
            .operations
            .iter()
            .filter(|op| matches!(op, Operation::RemoveMembers { .. }))
            .map(Operation::subject)
            .collect();
        groups.dedup();
        return Err(GuardStop::TooManyMemberRemovals {
            removals,
            groups: groups.len() as u64,
            limit,
            setting: policy.max_member_removals,
            managed,
            floor: policy.max_member_removals.floor(MEMBER_REMOVALS_FLOOR),
        });
    }
    Ok(())
}
