//! What a completed operation does to the state: one pure function from the
//! state, the operation and the target's answer to a [`StateChange`] and the
//! line the run's log records. The executor applies the change in memory and
//! the store persists the same value; the property tests and the benchmark go
//! through here too, so there is one definition of it.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use crate::model::{
    GroupKey, GroupName, Ownership, RemoteUser, ScimId, SourceKey, State, StateChange, StateGroup,
    StateUser, Status, UserAttr, UserAttrs, UserName,
};
use crate::plan::{Changes, NameStep, Operation};
use crate::state::OpOutcome;

use super::TargetError;

/// The target's answer to one operation, once its requests are done.
#[derive(Clone, Debug, PartialEq)]
pub enum Response {
    /// Done (for adoptions: nothing needed sending).
    Ok,
    /// A user PATCH done, the target answering that it holds these values of
    /// the attributes sent with one (`None`: it holds none).
    Kept(Vec<(UserAttr, Option<String>)>),
    /// The user now exists with this id, holding `attrs`.
    UserCreated {
        id: ScimId,
        ownership: Ownership,
        attrs: UserAttrs,
    },
    GroupCreated {
        id: ScimId,
        ownership: Ownership,
    },
    /// 404: the object is gone from the target.
    Gone,
    /// Not sent, and why.
    Skipped(String),
    /// Not sent or not adopted: the account is another user's (see `NameStep`).
    Refused(String),
    /// A create found an account with its userName (after a 409, or a resumed
    /// create); the executor decides whether it may be adopted.
    Existing {
        remote: RemoteUser,
        attrs: UserAttrs,
        lookup_first: bool,
    },
    Failed(TargetError),
}

/// What committing one operation means.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub change: Option<StateChange>,
    pub outcome: OpOutcome,
    pub http_status: Option<u16>,
    /// Why it failed or was skipped, or a note on a partial success.
    pub error: Option<String>,
}

impl Transition {
    fn applied(change: Option<StateChange>) -> Transition {
        Transition {
            change,
            outcome: OpOutcome::Applied,
            http_status: None,
            error: None,
        }
    }

    /// The status the executor knows from the response: a delete answered
    /// 404 is done (the object is gone), and its log line says it was a 404.
    /// Other successes carry no status: the target's calls do not return one.
    fn answered(self, response: &Response) -> Transition {
        match response {
            Response::Gone => Transition {
                http_status: Some(404),
                ..self
            },
            _ => self,
        }
    }

    fn failed(change: Option<StateChange>, status: Option<u16>, error: String) -> Transition {
        Transition {
            change,
            outcome: OpOutcome::Failed,
            http_status: status,
            error: Some(error),
        }
    }
}

/// The members of a membership operation that exist in the target, as their
/// source keys: the ones the executor sends.
pub fn members_present<'a>(state: &'a State, members: &'a [SourceKey]) -> Vec<&'a SourceKey> {
    members
        .iter()
        .filter(|m| state.live_user(m).is_some())
        .collect()
}

/// The state change and log line for `op` answered by `response`, given the
/// state before it. `create_only`: attributes left out of the hash. A table
/// of named cases, one small function each.
pub fn transition(
    state: &State,
    op: &Operation,
    response: Response,
    create_only: &BTreeSet<UserAttr>,
) -> Transition {
    let response = match settled_alike(response) {
        ControlFlow::Continue(response) => response,
        ControlFlow::Break(done) => return done,
    };
    let pushed = |id, user_name: &UserName, attrs, status, ownership| {
        StateUser::pushed(id, user_name.clone(), attrs, status, ownership, create_only)
    };
    match (op, response) {
        (
            Operation::AdoptUser {
                key,
                user_name,
                scim_id,
                attrs,
                active,
                ..
            },
            Response::Ok,
        ) => {
            let status = if *active {
                Status::Active
            } else {
                Status::Disabled
            };
            put_user(
                key,
                pushed(
                    scim_id.clone(),
                    user_name,
                    attrs.clone(),
                    status,
                    Ownership::Adopted,
                ),
            )
        }
        (
            Operation::AdoptGroup {
                key,
                display_name,
                scim_id,
            },
            Response::Ok,
        ) => put_group(key, scim_id.clone(), display_name, Ownership::Adopted),
        (
            Operation::CreateUser {
                key,
                user_name,
                name_step: Some(NameStep::TakesOver { from, .. }),
                ..
            },
            Response::UserCreated {
                id,
                ownership,
                attrs,
            },
        ) => Transition::applied(Some(StateChange::HandOver {
            from: from.clone(),
            key: key.clone(),
            user: pushed(id, user_name, attrs, Status::Active, ownership),
        })),
        (
            Operation::CreateUser {
                name_step: Some(NameStep::TakesOver { from, .. }),
                ..
            },
            Response::Gone,
        ) => taken_over_account_gone(from),
        (
            Operation::CreateUser { key, .. },
            Response::UserCreated {
                id,
                ownership: Ownership::Adopted,
                ..
            },
        ) if state
            .owner_of(&id, key)
            .is_some_and(|(_, u)| u.status != Status::Removed) =>
        {
            anothers_account(state, key, &id)
        }
        (
            Operation::CreateUser { key, user_name, .. },
            Response::UserCreated {
                id,
                ownership,
                attrs,
            },
        ) => put_user(key, pushed(id, user_name, attrs, Status::Active, ownership)),
        (
            Operation::UpdateUser { key, changes, .. } | Operation::EnableUser { key, changes, .. },
            response @ (Response::Ok | Response::Kept(_)),
        ) => {
            let enable = matches!(op, Operation::EnableUser { .. });
            updated_user(state, key, changes, enable, response, create_only)
        }
        (
            Operation::UpdateUser { key, .. }
            | Operation::EnableUser { key, .. }
            | Operation::DisableUser { key, .. },
            Response::Gone,
        ) => user_gone(key),
        (Operation::DisableUser { key, .. }, Response::Ok | Response::Kept(_)) => {
            user_status(key, Status::Disabled)
        }
        (Operation::DeleteUser { key, .. }, response @ (Response::Ok | Response::Gone)) => {
            user_status(key, Status::Removed).answered(&response)
        }
        (
            Operation::CreateGroup { key, display_name },
            Response::GroupCreated { id, ownership },
        ) => put_group(key, id, display_name, ownership),
        (
            Operation::UpdateGroup {
                key, display_name, ..
            },
            Response::Ok,
        ) => renamed_group(state, key, display_name),
        (
            Operation::AddMembers { key, members, .. }
            | Operation::RemoveMembers { key, members, .. },
            Response::Ok,
        ) => {
            let added = matches!(op, Operation::AddMembers { .. });
            members_changed(state, key, members, added)
        }
        (
            Operation::UpdateGroup { key, .. }
            | Operation::AddMembers { key, .. }
            | Operation::RemoveMembers { key, .. },
            Response::Gone,
        ) => group_gone(key),
        (
            Operation::DeleteGroup { key, scim_id, .. },
            response @ (Response::Ok | Response::Gone),
        ) => deleted_group(state, key, scim_id).answered(&response),
        (_, _) => Transition::failed(None, None, "unexpected response for this operation".into()),
    }
}

/// The answers that end every operation alike (failed, refused, skipped), as
/// their transition; any other answer back, for the operation to read.
fn settled_alike(response: Response) -> ControlFlow<Transition, Response> {
    match response {
        Response::Failed(err) => {
            ControlFlow::Break(Transition::failed(None, err.status(), err.to_string()))
        }
        Response::Refused(why) => ControlFlow::Break(Transition::failed(None, None, why)),
        Response::Skipped(why) => ControlFlow::Break(Transition {
            change: None,
            outcome: OpOutcome::Skipped,
            http_status: None,
            error: Some(why),
        }),
        other => ControlFlow::Continue(other),
    }
}

/// A user recorded as pushed.
fn put_user(key: &SourceKey, user: StateUser) -> Transition {
    Transition::applied(Some(StateChange::PutUser {
        key: key.clone(),
        user,
    }))
}

fn user_status(key: &SourceKey, status: Status) -> Transition {
    Transition::applied(Some(StateChange::UserStatus {
        key: key.clone(),
        status,
    }))
}

/// A group created or adopted, live under `display_name`.
fn put_group(
    key: &GroupKey,
    scim_id: ScimId,
    display_name: &GroupName,
    ownership: Ownership,
) -> Transition {
    Transition::applied(Some(StateChange::PutGroup {
        key: key.clone(),
        group: StateGroup {
            scim_id,
            display_name: display_name.clone(),
            status: Status::Active,
            ownership,
        },
    }))
}

/// A takeover found the leaver's account deleted: the leaver is removed, and
/// the next cycle creates a new account.
fn taken_over_account_gone(from: &SourceKey) -> Transition {
    Transition::failed(
        Some(StateChange::UserStatus {
            key: from.clone(),
            status: Status::Removed,
        }),
        Some(404),
        format!(
            "the account of user {from} no longer exists in the target; the next cycle creates a new one"
        ),
    )
}

/// A create found an account another live key holds: never adopted.
fn anothers_account(state: &State, key: &SourceKey, id: &ScimId) -> Transition {
    let (holder, _) = state.owner_of(id, key).expect("checked by the caller");
    Transition::failed(
        None,
        None,
        format!("the account {id} belongs to user {holder}; it is not adopted for user {key}"),
    )
}

/// An update (or re-enable) done: the pushed attributes with the changes
/// sent, then what the target answered it holds over them.
fn updated_user(
    state: &State,
    key: &SourceKey,
    changes: &Changes,
    enable: bool,
    response: Response,
    create_only: &BTreeSet<UserAttr>,
) -> Transition {
    let Some(current) = state.users.get(key) else {
        return Transition::applied(None);
    };
    if changes.is_empty() {
        // A plain re-enable: only the status changes.
        return Transition::applied(enable.then(|| StateChange::UserStatus {
            key: key.clone(),
            status: Status::Active,
        }));
    }
    let Some(pushed) = &current.attrs else {
        // The request went out, but what the user holds now cannot be
        // written down whole; recording nothing makes the next cycle
        // compare again and send what still differs.
        return Transition::failed(
            None,
            None,
            "the last pushed attributes were not loaded, so the result was not recorded; the next cycle checks this user again".into(),
        );
    };
    let mut attrs = pushed.clone();
    for (attr, c) in changes {
        match &c.new {
            Some(v) => attrs.insert(*attr, v.clone()),
            None => attrs.remove(attr),
        };
    }
    // What the target answered it holds, over what was sent.
    if let Response::Kept(kept) = response {
        for (attr, value) in kept {
            match value {
                Some(v) => attrs.insert(attr, v),
                None => attrs.remove(attr),
            };
        }
    }
    put_user(
        key,
        StateUser::pushed(
            current.scim_id.to_scim_id(),
            attrs
                .get(UserAttr::UserName)
                .map(UserName::new)
                .unwrap_or_else(|| current.user_name.clone()),
            *attrs,
            if enable {
                Status::Active
            } else {
                current.status
            },
            current.ownership,
            create_only,
        ),
    )
}

/// A user the target no longer has (404): removed, created again next cycle.
fn user_gone(key: &SourceKey) -> Transition {
    Transition::failed(
        Some(StateChange::UserStatus {
            key: key.clone(),
            status: Status::Removed,
        }),
        Some(404),
        "the user no longer exists in the target (deleted by hand?); it will be created again next cycle"
            .into(),
    )
}

fn renamed_group(state: &State, key: &GroupKey, display_name: &GroupName) -> Transition {
    Transition::applied(state.groups.get(key).map(|current| StateChange::PutGroup {
        key: key.clone(),
        group: StateGroup {
            display_name: display_name.clone(),
            ..current.clone()
        },
    }))
}

/// Members added or removed: those that exist in the target were sent; the
/// others wait for the next cycle.
fn members_changed(
    state: &State,
    key: &GroupKey,
    members: &[SourceKey],
    added: bool,
) -> Transition {
    let sent: Vec<SourceKey> = members_present(state, members)
        .into_iter()
        .cloned()
        .collect();
    let left = members.len() - sent.len();
    let change = if added {
        StateChange::MembersAdded {
            group: key.clone(),
            users: sent,
        }
    } else {
        StateChange::MembersRemoved {
            group: key.clone(),
            users: sent,
        }
    };
    let mut t = Transition::applied(Some(change));
    if left > 0 {
        t.error = Some(format!(
            "{left} member(s) not yet in the target were left for the next cycle"
        ));
    }
    t
}

/// A group the target no longer has (404): removed, created again next cycle.
fn group_gone(key: &GroupKey) -> Transition {
    Transition::failed(
        Some(StateChange::GroupStatus {
            key: key.clone(),
            status: Status::Removed,
        }),
        Some(404),
        "the group no longer exists in the target; it will be created again next cycle".into(),
    )
}

/// A group deleted. After a recreate, the key already names the new group:
/// only the old id is gone.
fn deleted_group(state: &State, key: &GroupKey, scim_id: &ScimId) -> Transition {
    Transition::applied(
        state
            .groups
            .get(key)
            .filter(|g| g.scim_id == *scim_id)
            .map(|_| StateChange::GroupStatus {
                key: key.clone(),
                status: Status::Removed,
            }),
    )
}

/// The state changes `plan` makes when every request succeeds, with made-up
/// SCIM ids shaped as targets make them (random-looking UUIDs, as most SCIM
/// servers answer): what a completed run leaves behind, through
/// the same transition. For benchmarks that seed a state DB without a target,
/// so the ids cost there what they cost in a real state.
pub fn assume_success(
    state: &State,
    plan: &crate::plan::Plan,
    create_only: &BTreeSet<UserAttr>,
) -> Vec<StateChange> {
    let mut state = state.clone();
    let mut changes = Vec::with_capacity(plan.operations.len());
    for (i, op) in plan.operations.iter().enumerate() {
        let response = match op {
            Operation::CreateUser { attrs, .. } => Response::UserCreated {
                id: made_up_id(i),
                ownership: Ownership::Created,
                attrs: attrs.clone(),
            },
            Operation::CreateGroup { .. } => Response::GroupCreated {
                id: made_up_id(i),
                ownership: Ownership::Created,
            },
            _ => Response::Ok,
        };
        if let Some(change) = transition(&state, op, response, create_only).change {
            state.apply(&change);
            changes.push(change);
        }
    }
    changes
}

/// A version-4-shaped UUID made from `n` (splitmix64 twice): distinct for
/// distinct `n`, the same from run to run.
fn made_up_id(n: usize) -> ScimId {
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let n = n as u64;
    let (hi, lo) = (mix(n.wrapping_mul(2)), mix(n.wrapping_mul(2) + 1));
    let hi = (hi & !0xf000) | 0x4000;
    let lo = (lo & !(0xc << 60)) | (0x8 << 60);
    ScimId::new(format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Change, Changes};

    #[test]
    fn made_up_ids_are_distinct_uuids() {
        let ids: BTreeSet<ScimId> = (0..10_000).map(made_up_id).collect();
        assert_eq!(ids.len(), 10_000);
        let id = made_up_id(7);
        let s = id.as_str();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
        assert_eq!(made_up_id(7), id);
    }

    #[test]
    fn an_update_records_what_the_target_answered_it_keeps() {
        let key = SourceKey::new("k1");
        let mut pushed = UserAttrs::new();
        pushed.insert(UserAttr::UserName, "ann@example.com");
        pushed.insert(UserAttr::Title, "Engineer");
        let mut state = State::default();
        state.users.insert(
            key.clone(),
            StateUser::pushed(
                ScimId::new("u1"),
                UserName::new("ann@example.com"),
                pushed,
                Status::Active,
                Ownership::Created,
                &BTreeSet::new(),
            ),
        );
        let mut changes = Changes::new();
        for (attr, new) in [
            (UserAttr::Title, "Lead"),
            (UserAttr::DisplayName, "Ann  Lee"),
        ] {
            changes.insert(
                attr,
                Change {
                    old: None,
                    new: Some(new.into()),
                },
            );
        }
        let op = Operation::UpdateUser {
            key: key.clone(),
            user_name: UserName::new("ann@example.com"),
            scim_id: ScimId::new("u1"),
            changes,
            name_step: None,
        };
        let kept = Response::Kept(vec![
            (UserAttr::Title, None),
            (UserAttr::DisplayName, Some("Ann Lee".into())),
        ]);
        let t = transition(&state, &op, kept, &BTreeSet::new());
        let Some(StateChange::PutUser { user, .. }) = t.change else {
            panic!("{t:?}");
        };
        let attrs = user.attrs.expect("attrs");
        assert_eq!(attrs.get(UserAttr::Title), None, "dropped: not recorded");
        assert_eq!(
            attrs.get(UserAttr::DisplayName),
            Some("Ann Lee"),
            "recorded as stored"
        );
    }

    #[test]
    fn a_delete_answered_404_is_applied_and_logs_the_404() {
        let state = State::default();
        let user = Operation::DeleteUser {
            key: SourceKey::new("k1"),
            user_name: UserName::new("ann@example.com"),
            scim_id: ScimId::new("u1"),
            reason: "left".into(),
            name_step: None,
        };
        let group = Operation::DeleteGroup {
            key: crate::model::GroupKey::new("g1"),
            scim_id: ScimId::new("g-1"),
            display_name: crate::model::GroupName::new("Ops"),
            reason: "gone from the source".into(),
        };
        for op in [&user, &group] {
            let gone = transition(&state, op, Response::Gone, &BTreeSet::new());
            assert_eq!(gone.outcome, OpOutcome::Applied, "{op:?}");
            assert_eq!(gone.http_status, Some(404), "{op:?}");
            assert_eq!(gone.error, None, "{op:?}");
            // A delete the target did: no status the executor knows.
            let done = transition(&state, op, Response::Ok, &BTreeSet::new());
            assert_eq!(done.outcome, OpOutcome::Applied, "{op:?}");
            assert_eq!(done.http_status, None, "{op:?}");
            assert_eq!(done.change, gone.change, "{op:?}");
        }
    }
}
