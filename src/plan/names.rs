//! userNames moving between managed users within one plan: a leaver's address
//! given to a new hire, two users swapping addresses, a rotation of three.
//! Targets keep userNames unique (Atlassian case-insensitively), so the order of
//! the work matters and some of it needs a decision:
//!
//! - A name held by a user who renames away in this plan: the rename runs first
//!   (before the creates when a create takes the name — the release phase).
//! - A cycle of renames (A takes B's name, B takes A's): one user of the cycle
//!   (the smallest key) first passes through a temporary userName
//!   ([`temporary_user_name`]), then the others rename, then it takes its final
//!   name. Each step is its own operation, so a crash between two resumes from
//!   what was committed.
//! - A name held by a user who left the source: with `remove_action: delete` the
//!   leaver's account is deleted first (release phase) and the create then makes
//!   a new account. Otherwise the leaver's (disabled) account keeps the name;
//!   `policy.reuse_accounts` decides: `never` (the default) refuses the create,
//!   naming both keys; `after_removal` hands the leaver's account to the new key
//!   once the leaver's removal is done.
//!
//! The executor reads the same order back from the operations: within a phase,
//! an operation that takes a name another one released starts a new batch
//! ([`claimed_name`], [`released_name`]).

use std::collections::{HashMap, HashSet};

use crate::model::{SourceKey, State, StateUser, Status, UserAttr, UserName};

use super::{Change, NameStep, Operation, Phase, Policy, ReuseAccounts};

/// The userName an operation takes in the target, if it takes one it did not
/// hold: a create (not a refused one), or a rename.
pub fn claimed_name(op: &Operation) -> Option<UserName> {
    if matches!(op.name_step(), Some(NameStep::Refused { .. })) {
        return None;
    }
    match op {
        Operation::CreateUser { user_name, .. } => Some(user_name.clone()),
        Operation::UpdateUser { changes, .. } | Operation::EnableUser { changes, .. } => {
            rename(changes).map(|(_, new)| new)
        }
        _ => None,
    }
}

/// The userName an operation frees in the target: a rename's old name, a
/// deleted user's name, a disabled leaver's name that a takeover reuses.
pub fn released_name(op: &Operation) -> Option<UserName> {
    if matches!(op.name_step(), Some(NameStep::Refused { .. })) {
        return None;
    }
    match op {
        Operation::UpdateUser { changes, .. } | Operation::EnableUser { changes, .. } => {
            rename(changes).map(|(old, _)| old)
        }
        Operation::DeleteUser { user_name, .. } => Some(user_name.clone()),
        Operation::DisableUser {
            user_name,
            name_step: Some(NameStep::Frees { .. }),
            ..
        } => Some(user_name.clone()),
        _ => None,
    }
}

/// `(old, new)` when the changes rename the user (case-insensitively: a change
/// of case alone frees nothing).
fn rename(changes: &super::Changes) -> Option<(UserName, UserName)> {
    let c = changes.get(&UserAttr::UserName)?;
    let (old, new) = (
        UserName::new(c.old.as_deref()?),
        UserName::new(c.new.as_deref()?),
    );
    (old != new).then_some((old, new))
}

/// A temporary userName for `key` while it makes way in a swap:
/// `idsync-tmp-<8 hex of the key's digest>+<local part>@<domain>`. It keeps the
/// domain (Atlassian refuses unverified domains) and is a valid address for
/// servers that check emails (RFC 5321: a local part of at most 64 characters,
/// so the old local part is shortened). The same key always gets the same name,
/// so a plan made again after a crash sends the same request.
pub fn temporary_user_name(key: &SourceKey, current: &UserName) -> UserName {
    let digest = blake3::hash(key.as_str().as_bytes()).to_hex();
    let tag = format!("idsync-tmp-{}", &digest[..8]);
    match current.as_str().rsplit_once('@') {
        Some((local, domain)) => {
            let room = 64 - tag.len() - 1;
            let local: String = local.chars().take(room).collect();
            UserName::new(format!("{tag}+{local}@{domain}"))
        }
        None => UserName::new(format!("{tag}+{}", current.as_str())),
    }
}

/// Orders `ops` (by phase, then by how names pass from user to user, then by
/// subject) and marks the steps that move names between users.
pub(super) fn sequence(
    mut ops: Vec<Operation>,
    state: &State,
    is_desired: &dyn Fn(&SourceKey) -> bool,
    policy: &Policy,
    warnings: &mut Vec<String>,
) -> Vec<Operation> {
    let claims: HashMap<UserName, usize> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| Some((claimed_name(op)?, i)))
        .collect();
    if !claims.is_empty() {
        link(&mut ops, &claims, state, is_desired, policy, warnings);
    }
    sort(ops)
}

/// Whether any operation could take a name another user holds: only then is
/// there anything to order (a first run's million creates is not).
pub(super) fn may_move_names(ops: &[Operation], state: &State) -> bool {
    ops.iter().any(|op| released_name(op).is_some())
        || (ops.iter().any(|op| claimed_name(op).is_some())
            && state.users.values().any(|u| u.status != Status::Removed))
}

/// Finds who holds each claimed name and decides what happens, adding the
/// temporary steps that break cycles.
fn link(
    ops: &mut Vec<Operation>,
    claims: &HashMap<UserName, usize>,
    state: &State,
    is_desired: &dyn Fn(&SourceKey) -> bool,
    policy: &Policy,
    warnings: &mut Vec<String>,
) {
    // One pass over the state: who holds a claimed name now.
    let mut held: Vec<(usize, &SourceKey, &StateUser)> = state
        .users
        .iter()
        .filter(|(_, u)| u.status != Status::Removed)
        .filter_map(|(k, u)| {
            let i = *claims.get(&u.user_name)?;
            (ops[i].user_key() != Some(k)).then_some((i, k, u))
        })
        .collect();
    held.sort_by(|a, b| a.1.cmp(b.1));
    // Each holder's own rename and removal in this plan, by key.
    let mut renames: HashMap<SourceKey, usize> = HashMap::new();
    let mut removals: HashMap<SourceKey, usize> = HashMap::new();
    if !held.is_empty() {
        for (j, op) in ops.iter().enumerate() {
            let by_key = match op {
                Operation::UpdateUser { .. } | Operation::EnableUser { .. } => &mut renames,
                Operation::DisableUser { .. } | Operation::DeleteUser { .. } => &mut removals,
                _ => continue,
            };
            if let Some(key) = op.user_key() {
                by_key.entry(key.clone()).or_insert(j);
            }
        }
    }
    for (i, holder_key, holder) in held {
        let Some(claimer) = ops[i].user_key().cloned() else {
            continue;
        };
        if renames
            .get(holder_key)
            .is_some_and(|j| released_name(&ops[*j]).is_some_and(|n| n == holder.user_name))
        {
            // The holder renames away in this plan: ordered below.
            continue;
        }
        let removal = removals.get(holder_key).copied();
        let leaving = !is_desired(holder_key);
        let is_create = matches!(ops[i], Operation::CreateUser { .. });
        match (removal.map(|r| (r, &ops[r])), is_create) {
            (Some((r, Operation::DeleteUser { .. })), _) => {
                mark_frees(ops, r, &claimer, holder_key);
            }
            (Some((r, Operation::DisableUser { .. })), true)
                if leaving && policy.reuse_accounts == ReuseAccounts::AfterRemoval =>
            {
                mark_frees(ops, r, &claimer, holder_key);
                set_step(
                    &mut ops[i],
                    NameStep::TakesOver {
                        from: holder_key.clone(),
                        scim_id: holder.scim_id.to_scim_id(),
                    },
                );
            }
            (None, true)
                if leaving
                    && holder.status == Status::Disabled
                    && policy.reuse_accounts == ReuseAccounts::AfterRemoval =>
            {
                set_step(
                    &mut ops[i],
                    NameStep::TakesOver {
                        from: holder_key.clone(),
                        scim_id: holder.scim_id.to_scim_id(),
                    },
                );
            }
            (_, true) => {
                let status = match removal.map(|r| &ops[r]) {
                    Some(Operation::DisableUser { .. }) => Status::Disabled,
                    _ => holder.status,
                };
                set_step(
                    &mut ops[i],
                    NameStep::Refused {
                        holder: holder_key.clone(),
                        status,
                    },
                );
            }
            (_, false) => {
                // An existing user cannot take over another account: the name
                // stays taken until the holder's account lets it go.
                let status = match removal.map(|r| &ops[r]) {
                    Some(Operation::DisableUser { .. }) => Status::Disabled,
                    _ => holder.status,
                };
                if matches!(ops[i], Operation::UpdateUser { .. }) {
                    set_step(
                        &mut ops[i],
                        NameStep::Refused {
                            holder: holder_key.clone(),
                            status,
                        },
                    );
                } else {
                    warnings.push(format!(
                        "user {claimer} is renamed to {:?}, which the account of user {holder_key} holds; the target will refuse the rename until that address is free",
                        holder.user_name.as_str()
                    ));
                }
            }
        }
    }
    ops.retain(|op| !matches!(op, Operation::RemoveMembers { members, .. } if members.is_empty()));
    break_cycles(ops);
    // Renames that free a name a create or an earlier-phase step takes run in the
    // release phase too, and so do the renames they wait for, in turn.
    loop {
        let waits = waits_for(ops);
        let mut moved = false;
        for (i, j) in waits.iter().enumerate() {
            let Some(j) = *j else { continue };
            if ops[j].phase() > ops[i].phase()
                && matches!(ops[j], Operation::UpdateUser { .. })
                && ops[j].name_step().is_none()
            {
                if let Some(for_key) = ops[i].user_key().cloned() {
                    set_step(&mut ops[j], NameStep::Frees { for_key });
                }
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
}

/// For each operation, the one that releases the name it claims (if in this plan).
fn waits_for(ops: &[Operation]) -> Vec<Option<usize>> {
    let releases: HashMap<UserName, usize> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| Some((released_name(op)?, i)))
        .collect();
    if releases.is_empty() {
        return vec![None; ops.len()];
    }
    ops.iter()
        .enumerate()
        .map(|(i, op)| {
            // A user's own steps (temporary, then final) follow by phase.
            claimed_name(op)
                .and_then(|n| releases.get(&n).copied())
                .filter(|j| *j != i && ops[*j].subject() != op.subject())
        })
        .collect()
}

/// The leaver's removal runs in the release phase, with its membership removals
/// (so the account leaves its groups before anyone else holds the name).
fn mark_frees(ops: &mut Vec<Operation>, removal: usize, for_key: &SourceKey, leaver: &SourceKey) {
    set_step(
        &mut ops[removal],
        NameStep::Frees {
            for_key: for_key.clone(),
        },
    );
    let mut split = Vec::new();
    for op in ops.iter_mut() {
        if let Operation::RemoveMembers {
            key,
            display_name,
            members,
            name_step: None,
            ..
        } = op
            && let Some(at) = members.iter().position(|m| m == leaver)
        {
            members.remove(at);
            split.push(Operation::RemoveMembers {
                key: key.clone(),
                display_name: display_name.clone(),
                members: vec![leaver.clone()],
                name_step: Some(NameStep::Frees {
                    for_key: for_key.clone(),
                }),
                dangling: Vec::new(),
            });
        }
    }
    // Emptied chunks are dropped once every claim is decided (indices hold
    // until then).
    ops.append(&mut split);
}

fn set_step(op: &mut Operation, step: NameStep) {
    match op {
        Operation::CreateUser { name_step, .. }
        | Operation::UpdateUser { name_step, .. }
        | Operation::DisableUser { name_step, .. }
        | Operation::DeleteUser { name_step, .. }
        | Operation::RemoveMembers { name_step, .. } => *name_step = Some(step),
        _ => {}
    }
}

/// Renames that wait on each other in a ring never start: the smallest key of
/// each ring first moves to a temporary name (release phase), and its final
/// rename then waits for the next user of the ring like any other.
fn break_cycles(ops: &mut Vec<Operation>) {
    let waits = waits_for(ops);
    let mut seen = vec![false; ops.len()];
    let mut temporaries = Vec::new();
    for start in 0..ops.len() {
        if seen[start] {
            continue;
        }
        let mut path = Vec::new();
        let mut on_path = HashSet::new();
        let mut at = Some(start);
        while let Some(i) = at {
            if on_path.contains(&i) {
                let from = path
                    .iter()
                    .position(|p| *p == i)
                    .expect("a node on the path is in it");
                let ring = &path[from..];
                let pick = *ring
                    .iter()
                    .min_by_key(|p: &&usize| ops[**p].subject())
                    .expect("a ring holds at least one rename");
                temporaries.push(pick);
                break;
            }
            if seen[i] {
                break;
            }
            seen[i] = true;
            on_path.insert(i);
            path.push(i);
            at = waits[i];
        }
    }
    for i in temporaries {
        let (Operation::UpdateUser {
            key,
            scim_id,
            changes,
            ..
        }
        | Operation::EnableUser {
            key,
            scim_id,
            changes,
            ..
        }) = &mut ops[i]
        else {
            continue;
        };
        let Some(old) = changes.get(&UserAttr::UserName).and_then(|c| c.old.clone()) else {
            continue;
        };
        let old = UserName::new(old);
        let temporary = temporary_user_name(key, &old);
        // Every attribute that holds the old name moves with it (on Atlassian
        // the email is unique too); the final step starts from the temporary.
        let mut first = super::Changes::new();
        for (attr, c) in changes.iter_mut() {
            if c.old.as_deref().is_some_and(|v| UserName::new(v) == old) {
                first.insert(
                    *attr,
                    Change {
                        old: c.old.clone(),
                        new: Some(temporary.as_str().to_string()),
                    },
                );
                c.old = Some(temporary.as_str().to_string());
            }
        }
        // Who takes the old name is filled in below, once the step exists.
        let step = Operation::UpdateUser {
            key: key.clone(),
            user_name: temporary,
            scim_id: scim_id.clone(),
            changes: first,
            name_step: Some(NameStep::Temporary {
                for_key: key.clone(),
            }),
        };
        ops.push(step);
    }
    // Name the user who takes each temporary's old name.
    let waits = waits_for(ops);
    for (i, j) in waits.iter().enumerate() {
        if let Some(j) = *j
            && let Operation::UpdateUser {
                name_step: Some(NameStep::Temporary { for_key }),
                ..
            } = &ops[j]
            && ops[j].user_key() == Some(for_key)
            && let Some(taker) = ops[i].user_key().cloned()
        {
            set_step(&mut ops[j], NameStep::Temporary { for_key: taker });
        }
    }
}

/// Sorts by phase, then by wave (an operation comes after the one that frees
/// its name, when both run in the same phase), then by subject.
fn sort(ops: Vec<Operation>) -> Vec<Operation> {
    let waits = waits_for(&ops);
    let mut wave: Vec<Option<u32>> = vec![None; ops.len()];
    for start in 0..ops.len() {
        let mut chain = Vec::new();
        let mut at = Some(start);
        let mut base = 0;
        while let Some(i) = at {
            if let Some(w) = wave[i] {
                base = w + 1;
                break;
            }
            if chain.contains(&i) || chain.len() > ops.len() {
                break;
            }
            chain.push(i);
            at = waits[i].filter(|j| ops[*j].phase() == ops[i].phase());
        }
        for i in chain.into_iter().rev() {
            wave[i] = Some(base);
            base += 1;
        }
    }
    // In the release phase a leaver leaves its groups before its removal, for
    // a plan that reads in the order things happen.
    let rank = |op: &Operation| u8::from(!matches!(op, Operation::RemoveMembers { .. }));
    let mut keyed: Vec<(Phase, u32, u8, Operation)> = ops
        .into_iter()
        .zip(wave)
        .map(|(op, w)| (op.phase(), w.unwrap_or(0), rank(&op), op))
        .collect();
    keyed.sort_by(|a, b| (a.0, a.1, a.2, a.3.subject()).cmp(&(b.0, b.1, b.2, b.3.subject())));
    keyed.into_iter().map(|(_, _, _, op)| op).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ScimId, State};
    use crate::plan::testkit::{desired, person, plan, state_of, with_group};
    use crate::plan::{Plan, RemoveAction, verify_saved};
    use crate::report::{PlanView, Style, plan_text};

    fn names(plan: &Plan) -> Vec<String> {
        plan.operations
            .iter()
            .map(|op| format!("{} {} {}", op.name(), op.subject(), op.display_subject()))
            .collect()
    }

    fn policy(remove: RemoveAction, reuse: ReuseAccounts) -> Policy {
        Policy {
            remove_action: remove,
            reuse_accounts: reuse,
            ..Policy::default()
        }
    }

    fn step(plan: &Plan, i: usize) -> Option<&NameStep> {
        plan.operations[i].name_step()
    }

    /// Leaver `1` held `a@x.com`; new hire `2` gets it in the same cycle.
    fn reuse_world(leaver: Status) -> (crate::model::Desired, State) {
        let old = person("1", "a@x.com", "Eng");
        let new = person("2", "a@x.com", "Lead");
        let stays = person("3", "c@x.com", "Eng");
        let state = with_group(
            state_of(&[(&old, leaver), (&stays, Status::Active)]),
            "g",
            "Staff",
            &["1", "3"],
        );
        let d = desired(
            vec![new, stays],
            vec![crate::plan::testkit::group("g", "Staff", &["2", "3"])],
        );
        (d, state)
    }

    #[test]
    fn a_leavers_address_is_refused_to_a_new_hire_under_never() {
        let (d, state) = reuse_world(Status::Active);
        let p = plan(
            &d,
            &state,
            &policy(RemoveAction::Disable, ReuseAccounts::Never),
        );
        assert_eq!(
            names(&p),
            [
                "create_user 2 a@x.com",
                "add_members g Staff",
                "remove_members g Staff",
                "disable_user 1 a@x.com"
            ]
        );
        assert_eq!(
            step(&p, 0),
            Some(&NameStep::Refused {
                holder: SourceKey::new("1"),
                status: Status::Disabled
            })
        );
        // Next cycle, the leaver is disabled: still refused, still named.
        let (d, state) = reuse_world(Status::Disabled);
        let p = plan(
            &d,
            &state,
            &policy(RemoveAction::Disable, ReuseAccounts::Never),
        );
        assert!(matches!(
            step(&p, 0),
            Some(NameStep::Refused { holder, status: Status::Disabled }) if holder.as_str() == "1"
        ));
        let text = plan_text(&p, PlanView::new(Style { color: false }));
        assert!(
            text.contains("refused: the userName belongs to the account of user 1 (disabled)"),
            "{text}"
        );
    }

    #[test]
    fn with_remove_action_delete_the_leavers_account_is_deleted_before_the_create() {
        for reuse in [ReuseAccounts::Never, ReuseAccounts::AfterRemoval] {
            let (d, state) = reuse_world(Status::Active);
            let p = plan(&d, &state, &policy(RemoveAction::Delete, reuse));
            assert_eq!(
                names(&p),
                [
                    "remove_members g Staff",
                    "delete_user 1 a@x.com",
                    "create_user 2 a@x.com",
                    "add_members g Staff",
                ]
            );
            assert_eq!(p.operations[0].phase(), Phase::Release);
            assert_eq!(
                step(&p, 1),
                Some(&NameStep::Frees {
                    for_key: SourceKey::new("2")
                })
            );
            assert_eq!(step(&p, 2), None);
            verify_saved(&p, &state).unwrap();
        }
    }

    #[test]
    fn after_removal_the_new_hire_takes_over_the_leavers_account_once_disabled() {
        let (d, state) = reuse_world(Status::Active);
        let p = plan(
            &d,
            &state,
            &policy(RemoveAction::Disable, ReuseAccounts::AfterRemoval),
        );
        assert_eq!(
            names(&p),
            [
                "remove_members g Staff",
                "disable_user 1 a@x.com",
                "create_user 2 a@x.com",
                "add_members g Staff",
            ]
        );
        assert!(matches!(step(&p, 1), Some(NameStep::Frees { .. })));
        assert_eq!(
            step(&p, 2),
            Some(&NameStep::TakesOver {
                from: SourceKey::new("1"),
                scim_id: ScimId::new("id-1")
            })
        );
        verify_saved(&p, &state).unwrap();
        // A cycle later (the leaver already disabled), the same decision.
        let (d, state) = reuse_world(Status::Disabled);
        let p = plan(
            &d,
            &state,
            &policy(RemoveAction::Disable, ReuseAccounts::AfterRemoval),
        );
        assert!(matches!(step(&p, 0), Some(NameStep::TakesOver { .. })));
        let text = plan_text(&p, PlanView::new(Style { color: false }));
        assert!(
            text.contains("takes over the account of user 1 (SCIM id id-1)"),
            "{text}"
        );
    }

    #[test]
    fn a_live_user_keeping_its_name_is_never_taken_over() {
        let a = person("1", "a@x.com", "Eng");
        let mut dup = person("2", "A@X.com", "Eng");
        dup.attrs.insert(UserAttr::Title, "Lead");
        let state = state_of(&[(&a, Status::Active)]);
        let p = plan(
            &desired(vec![a, dup], vec![]),
            &state,
            &policy(RemoveAction::Disable, ReuseAccounts::AfterRemoval),
        );
        assert!(matches!(
            step(&p, 0),
            Some(NameStep::Refused {
                status: Status::Active,
                ..
            })
        ));
    }

    fn renamed(
        key: &str,
        from: &str,
        to: &str,
    ) -> (crate::model::DesiredUser, crate::model::DesiredUser) {
        (person(key, from, "Eng"), person(key, to, "Eng"))
    }

    #[test]
    fn two_users_swapping_addresses_pass_through_a_temporary_name() {
        let (a0, a1) = renamed("1", "a@x.com", "b@x.com");
        let (b0, b1) = renamed("2", "b@x.com", "a@x.com");
        let state = state_of(&[(&a0, Status::Active), (&b0, Status::Active)]);
        let p = plan(&desired(vec![a1, b1], vec![]), &state, &Policy::default());
        let tmp = temporary_user_name(&SourceKey::new("1"), &UserName::new("a@x.com"));
        assert!(tmp.as_str().starts_with("idsync-tmp-"), "{tmp}");
        assert!(tmp.as_str().ends_with("+a@x.com"), "{tmp}");
        assert_eq!(
            names(&p),
            [
                format!("update_user 1 {tmp}"),
                "update_user 2 a@x.com".into(),
                "update_user 1 b@x.com".into(),
            ]
        );
        assert_eq!(
            step(&p, 0),
            Some(&NameStep::Temporary {
                for_key: SourceKey::new("2")
            })
        );
        let Operation::UpdateUser { changes, .. } = &p.operations[2] else {
            panic!()
        };
        assert_eq!(
            changes[&UserAttr::UserName].old.as_deref(),
            Some(tmp.as_str())
        );
        assert_eq!(changes[&UserAttr::Email].old.as_deref(), Some(tmp.as_str()));
        verify_saved(&p, &state).unwrap();
        let steps: Vec<_> = p
            .operations
            .iter()
            .map(|op| (op.phase(), op.name_step()))
            .collect();
        assert_eq!(steps[1], (Phase::UpdateUsers, None), "{steps:?}");
        assert_eq!(steps[2], (Phase::UpdateUsers, None), "{steps:?}");
        let text = plan_text(&p, PlanView::new(Style { color: false }));
        assert!(
            text.contains("temporary userName, to break a swap"),
            "{text}"
        );
    }

    #[test]
    fn a_rotation_of_three_needs_one_temporary_name() {
        let (a0, a1) = renamed("1", "a@x.com", "b@x.com");
        let (b0, b1) = renamed("2", "b@x.com", "c@x.com");
        let (c0, c1) = renamed("3", "c@x.com", "a@x.com");
        let state = state_of(&[
            (&a0, Status::Active),
            (&b0, Status::Active),
            (&c0, Status::Active),
        ]);
        let p = plan(
            &desired(vec![a1, b1, c1], vec![]),
            &state,
            &Policy::default(),
        );
        let order: Vec<String> = p
            .operations
            .iter()
            .map(|op| format!("{} {}", op.subject(), op.display_subject()))
            .collect();
        let tmp = temporary_user_name(&SourceKey::new("1"), &UserName::new("a@x.com"));
        assert_eq!(
            order,
            [
                format!("1 {tmp}"),
                "3 a@x.com".into(),
                "2 c@x.com".into(),
                "1 b@x.com".into()
            ]
        );
        verify_saved(&p, &state).unwrap();
    }

    #[test]
    fn a_chain_of_renames_is_ordered_without_a_temporary_name() {
        let (a0, a1) = renamed("1", "a@x.com", "b@x.com");
        let (b0, b1) = renamed("2", "b@x.com", "new@x.com");
        let state = state_of(&[(&a0, Status::Active), (&b0, Status::Active)]);
        let p = plan(&desired(vec![a1, b1], vec![]), &state, &Policy::default());
        assert_eq!(
            names(&p),
            ["update_user 2 new@x.com", "update_user 1 b@x.com"]
        );
        assert!(p.operations.iter().all(|op| op.name_step().is_none()));
    }

    #[test]
    fn a_rename_that_frees_a_name_for_a_new_hire_runs_before_the_creates() {
        let (b0, b1) = renamed("2", "b@x.com", "new@x.com");
        let hire = person("9", "b@x.com", "Eng");
        let state = state_of(&[(&b0, Status::Active)]);
        let p = plan(&desired(vec![b1, hire], vec![]), &state, &Policy::default());
        assert_eq!(
            names(&p),
            ["update_user 2 new@x.com", "create_user 9 b@x.com"]
        );
        assert_eq!(p.operations[0].phase(), Phase::Release);
    }

    #[test]
    fn temporary_names_are_valid_addresses_even_for_long_local_parts() {
        let long = format!("{}@x.com", "l".repeat(64));
        let tmp = temporary_user_name(&SourceKey::new("k"), &UserName::new(long.as_str()));
        let (local, domain) = tmp.as_str().rsplit_once('@').unwrap();
        assert!(local.len() <= 64, "{tmp}");
        assert_eq!(domain, "x.com");
        assert_eq!(
            tmp,
            temporary_user_name(&SourceKey::new("k"), &UserName::new(long.as_str()))
        );
    }

    #[test]
    fn names_free_until_cuts_where_a_released_name_is_taken() {
        let (a0, a1) = renamed("1", "a@x.com", "b@x.com");
        let (b0, b1) = renamed("2", "b@x.com", "c@x.com");
        let state = state_of(&[(&a0, Status::Active), (&b0, Status::Active)]);
        let p = plan(&desired(vec![a1, b1], vec![]), &state, &Policy::default());
        // 2 releases b, 1 takes it: two batches.
        let released: Vec<_> = p.operations.iter().filter_map(released_name).collect();
        let claimed: Vec<_> = p.operations.iter().filter_map(claimed_name).collect();
        assert_eq!(released[0], UserName::new("b@x.com"));
        assert_eq!(claimed[1], UserName::new("b@x.com"));
    }

    #[test]
    fn full_never_adopts_a_leavers_account_for_a_new_key() {
        use crate::model::{RemoteUser, TargetSnapshot};
        use crate::plan::testkit::options;
        // Leaver 1 is disabled (live) or recorded removed while its account is
        // still in the target; new hire 2 has its address.
        for leaver in [Status::Disabled, Status::Removed] {
            let old = person("1", "a@x.com", "Eng");
            let state = state_of(&[(&old, leaver)]);
            let target = TargetSnapshot {
                users: vec![RemoteUser {
                    id: ScimId::new("id-1"),
                    attrs: old.attrs.clone(),
                    active: false,
                }],
                groups: vec![],
                ..Default::default()
            };
            let input = crate::plan::PlanningInput::new(
                desired(vec![person("2", "a@x.com", "Lead")], vec![]),
                state,
                Some(target),
                options(&Policy::default()),
                |_, _| Ok::<(), ()>(()),
            )
            .unwrap();
            let p = crate::plan::plan(&input);
            assert!(
                !p.operations
                    .iter()
                    .any(|op| matches!(op, Operation::AdoptUser { .. })),
                "{leaver:?}: {:?}",
                p.operations
            );
        }
    }

    #[test]
    fn a_rename_to_an_address_a_disabled_leaver_keeps_is_refused_not_sent() {
        let (a0, a1) = renamed("1", "a@x.com", "old@x.com");
        let leaver = person("2", "old@x.com", "Eng");
        let state = state_of(&[(&a0, Status::Active), (&leaver, Status::Disabled)]);
        for reuse in [ReuseAccounts::Never, ReuseAccounts::AfterRemoval] {
            let p = plan(
                &desired(vec![a1.clone()], vec![]),
                &state,
                &policy(RemoveAction::Disable, reuse),
            );
            assert_eq!(names(&p), ["update_user 1 old@x.com"]);
            assert!(matches!(
                step(&p, 0),
                Some(NameStep::Refused { holder, status: Status::Disabled }) if holder.as_str() == "2"
            ));
            assert_eq!(claimed_name(&p.operations[0]), None);
        }
        // Under delete, the leaver's account is deleted first instead.
        let p = plan(
            &desired(vec![a1], vec![]),
            &state,
            &policy(RemoveAction::Delete, ReuseAccounts::Never),
        );
        assert_eq!(
            names(&p),
            ["delete_user 2 old@x.com", "update_user 1 old@x.com"]
        );
    }
}
