//! `sync --only KEY|EMAIL`: provision on demand. The whole plan is made as
//! usual, then cut down to the named users: their own operations, their
//! memberships (and the creation of a group they are added to), nothing else.
//! Guards, journal and history are the cycle's own, so an on-demand run is an
//! ordinary run with fewer operations.

use std::collections::BTreeSet;

use crate::model::{Email, GroupKey, SourceKey, UserName};
use crate::plan::{self, Operation, Plan, PlanningInput, Skipped, Summary};

use super::SyncError;

/// The source keys of the users asked for, by key, userName or email: first
/// among the users the source has in scope, then among those it has out of
/// scope, then among those the state records (a leaver). A name found nowhere
/// is an error naming it.
pub fn resolve(input: &PlanningInput, asked: &[String]) -> Result<BTreeSet<SourceKey>, SyncError> {
    let mut keys = BTreeSet::new();
    for who in asked {
        let key = find(input, who).ok_or_else(|| SyncError::UnknownUser { asked: who.clone() })?;
        keys.insert(key);
    }
    Ok(keys)
}

fn find(input: &PlanningInput, who: &str) -> Option<SourceKey> {
    let desired = input.desired();
    let wanted_email = Email::new(who);
    let wanted_name = UserName::new(who);
    if let Some(user) = desired.users.iter().find(|u| {
        u.key.as_str() == who || u.user_name() == wanted_name || u.email() == wanted_email
    }) {
        return Some(user.key.clone());
    }
    if let Some(key) = desired.out_of_scope.iter().find(|k| k.as_str() == who) {
        return Some(key.clone());
    }
    let state = input.state();
    state
        .users
        .iter()
        .find(|(k, u)| k.as_str() == who || u.user_name == wanted_name)
        .map(|(k, _)| k.clone())
}

/// `plan` restricted to `keys`: their user operations, membership changes
/// naming only them, and the group creations those additions need; the same
/// cut of what the plan skips (its action off). The fingerprint is made again
/// over what is left.
pub fn restrict(
    plan: Plan,
    keys: &BTreeSet<SourceKey>,
    config_fingerprint: &str,
    generation: i64,
) -> Plan {
    let mut needed_groups: BTreeSet<GroupKey> = BTreeSet::new();
    let skipped_ops = plan.skipped.iter().map(|s| &s.op);
    for op in plan.operations.iter().chain(skipped_ops) {
        if let Operation::AddMembers { key, members, .. } = op
            && members.iter().any(|m| keys.contains(m))
        {
            needed_groups.insert(key.clone());
        }
    }
    let operations: Vec<Operation> = plan
        .operations
        .into_iter()
        .filter_map(|op| cut(op, keys, &needed_groups))
        .collect();
    let skipped: Vec<Skipped> = plan
        .skipped
        .into_iter()
        .filter_map(|s| {
            cut(s.op, keys, &needed_groups).map(|op| Skipped {
                op,
                action_off: s.action_off,
            })
        })
        .collect();
    Plan {
        fingerprint: plan::fingerprint(
            config_fingerprint,
            generation,
            plan.full,
            &operations,
            &skipped,
        ),
        summary: Summary::of(&operations),
        operations,
        skipped,
        ..plan
    }
}

/// `op` as far as it concerns `keys` (and the groups their additions need),
/// if at all.
fn cut(
    op: Operation,
    keys: &BTreeSet<SourceKey>,
    needed_groups: &BTreeSet<GroupKey>,
) -> Option<Operation> {
    match op {
        Operation::AdoptUser { ref key, .. }
        | Operation::CreateUser { ref key, .. }
        | Operation::UpdateUser { ref key, .. }
        | Operation::EnableUser { ref key, .. }
        | Operation::DisableUser { ref key, .. }
        | Operation::DeleteUser { ref key, .. } => keys.contains(key).then_some(op),
        Operation::CreateGroup { ref key, .. } => needed_groups.contains(key).then_some(op),
        Operation::AdoptGroup { .. }
        | Operation::UpdateGroup { .. }
        | Operation::DeleteGroup { .. } => None,
        Operation::AddMembers {
            key,
            display_name,
            members,
        } => {
            let members: Vec<SourceKey> =
                members.into_iter().filter(|m| keys.contains(m)).collect();
            (!members.is_empty()).then_some(Operation::AddMembers {
                key,
                display_name,
                members,
            })
        }
        // Dangling members are nobody's: `--only` never removes them.
        Operation::RemoveMembers {
            key,
            display_name,
            members,
            dangling: _,
            name_step,
        } => {
            let members: Vec<SourceKey> =
                members.into_iter().filter(|m| keys.contains(m)).collect();
            (!members.is_empty()).then_some(Operation::RemoveMembers {
                key,
                display_name,
                members,
                dangling: Vec::new(),
                name_step,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GroupName, ScimId};

    fn keys(names: &[&str]) -> Vec<SourceKey> {
        names.iter().map(|k| SourceKey::new(*k)).collect()
    }

    fn plan_of(operations: Vec<Operation>) -> Plan {
        Plan {
            fingerprint: String::new(),
            full: false,
            summary: Summary::of(&operations),
            operations,
            skipped: Vec::new(),
            warnings: Vec::new(),
            ignored_members: 0,
            source_users: 0,
            managed_users: 0,
            managed_memberships: 0,
            observed: Vec::new(),
            held_groups: 0,
            member_names: Default::default(),
        }
    }

    #[test]
    fn only_the_named_users_operations_and_memberships_are_kept() {
        let user = |key: &str| Operation::CreateUser {
            key: SourceKey::new(key),
            user_name: UserName::new(format!("{key}@example.com")),
            attrs: Default::default(),
            name_step: None,
        };
        let group = |key: &str| Operation::CreateGroup {
            key: GroupKey::new(key),
            display_name: GroupName::new(key),
        };
        let plan = plan_of(vec![
            user("a"),
            user("b"),
            group("with-a"),
            group("without-a"),
            Operation::AddMembers {
                key: GroupKey::new("with-a"),
                display_name: GroupName::new("with-a"),
                members: keys(&["a", "b"]),
            },
            Operation::AddMembers {
                key: GroupKey::new("without-a"),
                display_name: GroupName::new("without-a"),
                members: keys(&["b"]),
            },
            Operation::RemoveMembers {
                key: GroupKey::new("old"),
                display_name: GroupName::new("old"),
                members: keys(&["a", "c"]),
                dangling: Vec::new(),
                name_step: None,
            },
            Operation::DisableUser {
                key: SourceKey::new("c"),
                user_name: UserName::new("c@example.com"),
                scim_id: ScimId::new("id-c"),
                reason: "not in the source".into(),
                name_step: None,
            },
        ]);
        let only = BTreeSet::from([SourceKey::new("a")]);
        let cut = restrict(plan, &only, "config", 7);
        let names = crate::plan::testkit::names(&cut);
        assert_eq!(
            names,
            [
                "create_user a",
                "create_group with-a",
                "add_members with-a",
                "remove_members old"
            ]
        );
        for op in &cut.operations {
            if let Operation::AddMembers { members, .. }
            | Operation::RemoveMembers { members, .. } = op
            {
                assert_eq!(members, &keys(&["a"]));
            }
        }
        assert_eq!(cut.summary, Summary::of(&cut.operations));
        assert_eq!(
            cut.fingerprint,
            plan::fingerprint("config", 7, false, &cut.operations, &[])
        );
    }
}
