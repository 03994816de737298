//! A saved plan checked against the state it is about to be applied to.
//!
//! The fingerprint ties a saved plan to its config, its state generation and its
//! operations, but anyone who can read the config can recompute it, so the
//! operations are also checked one by one against the state, by key: the SCIM
//! ids and names the executor will act on must be the ones the state records
//! for objects idsync created or adopted (every object in the state is one of
//! those). A plan file edited to point at someone else's account is refused
//! whole, before anything is sent.

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::model::{GroupKey, ScimId, SourceKey, State, StateUser, UserAttr, UserName};

use super::{NameStep, Operation, Plan};

/// The first operation of a saved plan that does not match the state, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanMismatch {
    /// 1-based position of the operation in the plan.
    pub index: usize,
    /// The operation's plan-JSON name.
    pub op: &'static str,
    /// Its source key.
    pub subject: String,
    pub reason: Mismatch,
}

/// Why an operation does not match the state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// The state has no live object with this key.
    NotManaged,
    /// A create for a key the state already holds live.
    AlreadyLive,
    /// The plan's SCIM id is not the one the state records for the key.
    ScimId { plan: ScimId, state: ScimId },
    /// The plan's userName or group name is not the one the state records.
    Name { plan: String, state: String },
    /// A membership change names a user neither live nor created by the plan.
    UnknownMember(SourceKey),
    /// Adoptions come only from `--full`, whose plans are never saved.
    Adoption,
    /// Dangling member removals come only from `--full` too.
    Dangling,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::NotManaged => f.write_str("the state DB has no live object with this key"),
            Mismatch::Dangling => f.write_str(
                "dangling member removals come only from --full, whose plans are never saved",
            ),
            Mismatch::AlreadyLive => f.write_str("the state DB already holds this key live"),
            Mismatch::ScimId { plan, state } => write!(
                f,
                "SCIM id {:?} is not the one the state DB records ({:?})",
                plan.as_str(),
                state.as_str()
            ),
            Mismatch::Name { plan, state } => write!(
                f,
                "name {plan:?} is not the one the state DB records ({state:?})"
            ),
            Mismatch::UnknownMember(key) => write!(
                f,
                "member {:?} is neither managed nor created by the plan",
                key.as_str()
            ),
            Mismatch::Adoption => f.write_str("adoptions are made only by `sync --full`"),
        }
    }
}

impl fmt::Display for PlanMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "operation #{} {} {:?}: {}",
            self.index, self.op, self.subject, self.reason
        )
    }
}

/// Checks every operation of a saved plan against `state` (the state the plan's
/// fingerprint names); the first that does not match refuses the plan.
pub fn verify_saved(plan: &Plan, state: &State) -> Result<(), PlanMismatch> {
    let mut ctx = Context::of(plan, state);
    for (i, op) in plan.operations.iter().enumerate() {
        ctx.check(op).map_err(|reason| PlanMismatch {
            index: i + 1,
            op: op.name(),
            subject: op.subject().to_string(),
            reason,
        })?;
    }
    Ok(())
}

/// What the plan itself brings into being, which later operations may name.
struct Context<'a> {
    state: &'a State,
    created_users: HashSet<&'a SourceKey>,
    created_groups: HashSet<&'a GroupKey>,
    deleted_groups: HashSet<&'a GroupKey>,
    /// The userName an update renames a user to: a disable later in the same
    /// plan names the user by it.
    renamed: HashMap<&'a SourceKey, UserName>,
    /// The userName a user holds at this point of the plan, once an earlier
    /// operation renamed it (a swap passes through a temporary name).
    current: HashMap<&'a SourceKey, UserName>,
}

impl<'a> Context<'a> {
    fn of(plan: &'a Plan, state: &'a State) -> Context<'a> {
        let mut ctx = Context {
            state,
            created_users: HashSet::new(),
            created_groups: HashSet::new(),
            deleted_groups: HashSet::new(),
            renamed: HashMap::new(),
            current: HashMap::new(),
        };
        for op in &plan.operations {
            match op {
                Operation::CreateUser { key, .. } => {
                    ctx.created_users.insert(key);
                }
                Operation::CreateGroup { key, .. } => {
                    ctx.created_groups.insert(key);
                }
                Operation::DeleteGroup { key, .. } => {
                    ctx.deleted_groups.insert(key);
                }
                Operation::UpdateUser { key, user_name, .. }
                | Operation::EnableUser { key, user_name, .. } => {
                    ctx.renamed.insert(key, user_name.clone());
                }
                _ => {}
            }
        }
        ctx
    }

    fn check(&mut self, op: &'a Operation) -> Result<(), Mismatch> {
        match op {
            Operation::AdoptUser { .. } | Operation::AdoptGroup { .. } => Err(Mismatch::Adoption),
            Operation::CreateUser { key, name_step, .. } => {
                if self.state.live_user(key).is_some() {
                    return Err(Mismatch::AlreadyLive);
                }
                // A takeover names the leaver's account as the state holds it.
                if let Some(NameStep::TakesOver { from, scim_id }) = name_step {
                    let holder = self.state.live_user(from).ok_or(Mismatch::NotManaged)?;
                    same_id(scim_id, &holder.scim_id)?;
                }
                Ok(())
            }
            Operation::UpdateUser {
                key,
                user_name,
                scim_id,
                changes,
                ..
            }
            | Operation::EnableUser {
                key,
                user_name,
                scim_id,
                changes,
            } => {
                let s = self.live_user(key, scim_id)?;
                // The plan carries the old userName when it renames the user.
                let old = match changes.get(&UserAttr::UserName) {
                    Some(change) => change.old.as_deref().map(UserName::new),
                    None => Some(user_name.clone()),
                };
                let result = match (old, self.current.get(key)) {
                    (Some(old), Some(now)) if old == *now => Ok(()),
                    (Some(old), Some(now)) => Err(Mismatch::Name {
                        plan: old.to_string(),
                        state: now.to_string(),
                    }),
                    (Some(old), None) => same_user_name(&old, s),
                    (None, _) => Ok(()),
                };
                self.current.insert(key, user_name.clone());
                result
            }
            Operation::DisableUser {
                key,
                user_name,
                scim_id,
                ..
            }
            | Operation::DeleteUser {
                key,
                user_name,
                scim_id,
                ..
            } => {
                let s = self.live_user(key, scim_id)?;
                // A user the plan also renames is named by its new userName.
                match self.renamed.get(key) {
                    Some(new) if new == user_name => Ok(()),
                    _ => same_user_name(user_name, s),
                }
            }
            Operation::CreateGroup { key, .. } => {
                // Rename-by-recreate creates the new group under the same key and
                // deletes the old one.
                if self.state.live_group(key).is_some() && !self.deleted_groups.contains(key) {
                    return Err(Mismatch::AlreadyLive);
                }
                Ok(())
            }
            Operation::UpdateGroup {
                key,
                scim_id,
                old_display_name,
                ..
            } => self.live_group(key, scim_id, old_display_name.as_str()),
            Operation::DeleteGroup {
                key,
                scim_id,
                display_name,
                ..
            } => self.live_group(key, scim_id, display_name.as_str()),
            Operation::RemoveMembers { dangling, .. } if !dangling.is_empty() => {
                Err(Mismatch::Dangling)
            }
            Operation::AddMembers { key, members, .. }
            | Operation::RemoveMembers { key, members, .. } => {
                if self.state.live_group(key).is_none() && !self.created_groups.contains(key) {
                    return Err(Mismatch::NotManaged);
                }
                match members
                    .iter()
                    .find(|m| self.state.live_user(m).is_none() && !self.created_users.contains(m))
                {
                    Some(unknown) => Err(Mismatch::UnknownMember(unknown.clone())),
                    None => Ok(()),
                }
            }
        }
    }

    /// The live state user for `key`, if the plan names it by its SCIM id.
    fn live_user(&self, key: &SourceKey, scim_id: &ScimId) -> Result<&'a StateUser, Mismatch> {
        let s = self.state.live_user(key).ok_or(Mismatch::NotManaged)?;
        same_id(scim_id, &s.scim_id)?;
        Ok(s)
    }

    fn live_group(&self, key: &GroupKey, scim_id: &ScimId, name: &str) -> Result<(), Mismatch> {
        let g = self.state.live_group(key).ok_or(Mismatch::NotManaged)?;
        same_id(scim_id, &g.scim_id)?;
        if g.display_name.as_str() != name && g.display_name != name.into() {
            return Err(Mismatch::Name {
                plan: name.to_string(),
                state: g.display_name.to_string(),
            });
        }
        Ok(())
    }
}

/// Whether the plan names the account the state holds (a user's id is held
/// as a [`crate::model::StoredId`], a group's as a `ScimId`).
fn same_id<S: PartialEq<ScimId> + std::fmt::Display>(
    plan: &ScimId,
    state: &S,
) -> Result<(), Mismatch> {
    if state != plan {
        return Err(Mismatch::ScimId {
            plan: plan.clone(),
            state: ScimId::new(state.to_string()),
        });
    }
    Ok(())
}

fn same_user_name(plan: &UserName, s: &StateUser) -> Result<(), Mismatch> {
    if *plan != s.user_name {
        return Err(Mismatch::Name {
            plan: plan.to_string(),
            state: s.user_name.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GroupName, Status};
    use crate::plan::testkit::{
        arb_policy, arb_world, desired, group, person, plan, state_of, with_group,
    };
    use crate::plan::{Change, Policy};
    use proptest::prelude::*;

    /// Two managed users (e1 active, e2 leaving), one managed group, and the plan
    /// that removes e2 and renames e1, as `plan --out` would save it.
    fn world() -> (State, Plan) {
        let ada = person("e1", "ada@example.com", "Engineer");
        let bob = person("e2", "bob@example.com", "Designer");
        let state = with_group(
            state_of(&[(&ada, Status::Active), (&bob, Status::Active)]),
            "g",
            "Team",
            &["e1", "e2"],
        );
        let renamed = person("e1", "ada.l@example.com", "Engineer");
        let newcomer = person("e3", "cy@example.com", "Lead");
        let d = desired(
            vec![renamed, newcomer],
            vec![group("g", "Team", &["e1", "e3"])],
        );
        let policy = Policy {
            remove_action: crate::plan::RemoveAction::Delete,
            ..Policy::default()
        };
        let p = plan(&d, &state, &policy);
        (state, p)
    }

    fn op_mut<'p>(plan: &'p mut Plan, name: &str) -> &'p mut Operation {
        plan.operations
            .iter_mut()
            .find(|op| op.name() == name)
            .unwrap_or_else(|| panic!("no {name} in the plan"))
    }

    #[test]
    fn an_untouched_plan_matches_its_state() {
        let (state, plan) = world();
        for name in ["create_user", "update_user", "delete_user", "add_members"] {
            assert!(
                plan.operations.iter().any(|op| op.name() == name),
                "{name} missing from {plan:#?}"
            );
        }
        assert_eq!(verify_saved(&plan, &state), Ok(()));
    }

    #[test]
    fn a_delete_pointed_at_another_scim_id_is_refused() {
        let (state, mut plan) = world();
        if let Operation::DeleteUser { scim_id, .. } = op_mut(&mut plan, "delete_user") {
            *scim_id = ScimId::new("someone-else");
        }
        let err = verify_saved(&plan, &state).unwrap_err();
        assert_eq!(err.op, "delete_user");
        assert_eq!(err.subject, "e2");
        assert!(matches!(err.reason, Mismatch::ScimId { .. }), "{err}");
        assert!(err.to_string().contains("someone-else"), "{err}");
    }

    #[test]
    fn an_update_of_an_unmanaged_key_is_refused() {
        let (state, mut plan) = world();
        if let Operation::UpdateUser { key, .. } = op_mut(&mut plan, "update_user") {
            *key = SourceKey::new("stranger");
        }
        let err = verify_saved(&plan, &state).unwrap_err();
        assert_eq!(err.reason, Mismatch::NotManaged);
    }

    #[test]
    fn an_update_naming_another_old_user_name_is_refused() {
        let (state, mut plan) = world();
        if let Operation::UpdateUser { changes, .. } = op_mut(&mut plan, "update_user") {
            changes.insert(
                UserAttr::UserName,
                Change {
                    old: Some("boss@example.com".into()),
                    new: Some("ada.l@example.com".into()),
                },
            );
        }
        let err = verify_saved(&plan, &state).unwrap_err();
        assert!(matches!(err.reason, Mismatch::Name { .. }), "{err}");
    }

    #[test]
    fn a_delete_naming_another_user_name_is_refused() {
        let (state, mut plan) = world();
        if let Operation::DeleteUser { user_name, .. } = op_mut(&mut plan, "delete_user") {
            *user_name = UserName::new("boss@example.com");
        }
        let err = verify_saved(&plan, &state).unwrap_err();
        assert!(matches!(err.reason, Mismatch::Name { .. }), "{err}");
    }

    #[test]
    fn a_removed_user_is_not_live() {
        let (mut state, mut plan) = world();
        state.users.get_mut(&SourceKey::new("e2")).unwrap().status = Status::Removed;
        plan.operations.retain(|op| op.name() == "delete_user");
        let err = verify_saved(&plan, &state).unwrap_err();
        assert_eq!((err.op, err.reason), ("delete_user", Mismatch::NotManaged));
    }

    #[test]
    fn a_create_for_a_live_key_is_refused() {
        let (state, mut plan) = world();
        if let Operation::CreateUser { key, .. } = op_mut(&mut plan, "create_user") {
            *key = SourceKey::new("e1");
        }
        assert_eq!(
            verify_saved(&plan, &state).unwrap_err().reason,
            Mismatch::AlreadyLive
        );
    }

    #[test]
    fn membership_changes_name_live_or_created_groups_and_users() {
        let (state, mut plan) = world();
        if let Operation::AddMembers { key, .. } = op_mut(&mut plan, "add_members") {
            *key = GroupKey::new("not-managed");
        }
        assert_eq!(
            verify_saved(&plan, &state).unwrap_err().reason,
            Mismatch::NotManaged
        );
        let (state, mut plan) = world();
        if let Operation::AddMembers { members, .. } = op_mut(&mut plan, "add_members") {
            members.push(SourceKey::new("ghost"));
        }
        assert_eq!(
            verify_saved(&plan, &state).unwrap_err().reason,
            Mismatch::UnknownMember(SourceKey::new("ghost"))
        );
    }

    #[test]
    fn a_saved_plan_with_dangling_member_removals_is_refused() {
        let (state, mut plan) = world();
        let Operation::AddMembers {
            key, display_name, ..
        } = op_mut(&mut plan, "add_members").clone()
        else {
            unreachable!()
        };
        plan.operations.push(Operation::RemoveMembers {
            key,
            display_name,
            members: Vec::new(),
            dangling: vec!["some-id".into()],
            name_step: None,
        });
        assert_eq!(
            verify_saved(&plan, &state).unwrap_err().reason,
            Mismatch::Dangling
        );
    }

    #[test]
    fn group_deletes_and_renames_must_match_id_and_name() {
        let (state, mut plan) = world();
        plan.operations.push(Operation::DeleteGroup {
            key: GroupKey::new("g"),
            scim_id: state.groups[&GroupKey::new("g")].scim_id.clone(),
            display_name: GroupName::new("Other"),
            reason: "edited".into(),
        });
        assert!(matches!(
            verify_saved(&plan, &state).unwrap_err().reason,
            Mismatch::Name { .. }
        ));
        let (state, mut plan) = world();
        plan.operations.push(Operation::UpdateGroup {
            key: GroupKey::new("g"),
            scim_id: ScimId::new("foreign-group"),
            display_name: GroupName::new("Renamed"),
            old_display_name: GroupName::new("Team"),
        });
        assert!(matches!(
            verify_saved(&plan, &state).unwrap_err().reason,
            Mismatch::ScimId { .. }
        ));
    }

    #[test]
    fn a_rename_by_recreate_plan_matches() {
        let ada = person("e1", "ada@example.com", "Engineer");
        let state = with_group(state_of(&[(&ada, Status::Active)]), "g", "Team", &["e1"]);
        let d = desired(vec![ada.clone()], vec![group("g", "Team 2", &["e1"])]);
        let policy = Policy {
            on_rename: crate::plan::OnRename::Recreate,
            ..Policy::default()
        };
        let plan = plan(&d, &state, &policy);
        assert!(plan.operations.iter().any(|o| o.name() == "create_group"));
        assert_eq!(verify_saved(&plan, &state), Ok(()));
    }

    #[test]
    fn adoptions_are_never_accepted_from_a_file() {
        let (state, mut plan) = world();
        plan.operations.insert(
            0,
            Operation::AdoptGroup {
                key: GroupKey::new("x"),
                display_name: GroupName::new("X"),
                scim_id: ScimId::new("x"),
            },
        );
        let err = verify_saved(&plan, &state).unwrap_err();
        assert_eq!((err.index, err.reason), (1, Mismatch::Adoption));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// No false refusals: every plan matches the state it was made from.
        #[test]
        fn every_plan_matches_the_state_it_was_made_from(
            (d, state) in arb_world(),
            policy in arb_policy(),
        ) {
            let p = plan(&d, &state, &policy);
            prop_assert_eq!(verify_saved(&p, &state), Ok(()));
        }
    }
}
