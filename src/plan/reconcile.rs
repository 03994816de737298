//! `--full`: folds what the target really holds into the state before planning.
//! Objects missing from the target are marked removed (so they are created
//! again), attributes and memberships become what the target holds (so drift is
//! corrected), and desired objects found in the target by `userName`, then
//! `externalId` (groups: `displayName`) are adopted.
//!
//! Everything it concludes is a value the executor commits: adoptions are
//! operations, the rest are observed state changes. Applying both to the state
//! gives exactly the state the plan was made against.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::model::{
    AttrHash, Desired, DesiredUser, GroupName, MemberResolver, Ownership, RemoteGroup, RemoteUser,
    SourceKey, State, StateChange, StateGroup, StateUser, Status, TargetSnapshot, UserAttr,
    UserAttrs, UserName,
};

use super::{MatchedBy, Operation};
use crate::model::TargetRules;

/// What reconciling found.
pub(super) struct Reconciled {
    /// The state as the target holds it: what the plan is made against.
    pub state: State,
    /// Target objects that become managed, sorted.
    pub adoptions: Vec<Operation>,
    /// Corrections to what idsync recorded, committed after the adoptions.
    pub observed: Vec<StateChange>,
    /// Removals of dangling members (stored values no user has) from the
    /// groups idsync manages.
    pub dangling: Vec<Operation>,
}

/// Reconciles `state` (which carries every live user's attributes) with the
/// target's contents, comparing as `rules` say the target holds values.
pub(super) fn reconcile(
    desired: &Desired,
    state: &State,
    target: &TargetSnapshot,
    rules: &TargetRules,
) -> Reconciled {
    let mut out = state.clone();
    out.memberships.clear();
    let mut adoptions = Vec::new();
    let mut observed = Vec::new();
    let by_id: HashMap<&str, &RemoteUser> =
        target.users.iter().map(|u| (u.id.as_str(), u)).collect();
    let desired_by_key: HashMap<&SourceKey, &DesiredUser> =
        desired.users.iter().map(|d| (&d.key, d)).collect();
    let mut claimed: HashSet<&str> = HashSet::new();

    let observe =
        |remote: &RemoteUser, pushed: Option<&UserAttrs>, wanted: Option<&DesiredUser>| {
            // Only attributes idsync manages for this user count as drift.
            let mut attrs: UserAttrs = remote
                .attrs
                .iter()
                .filter(|(a, _)| {
                    *a == UserAttr::UserName
                        || pushed.is_some_and(|p| p.contains_key(a))
                        || wanted.is_some_and(|w| w.attrs.contains_key(a))
                })
                .filter(|(a, _)| !rules.unheld.contains(a))
                .map(|(a, v)| (a, held_as(a, v, pushed, wanted, rules)))
                .collect();
            // What the target does not hold is not compared: it stays as idsync
            // recorded it (or as wanted, for a user adopted now).
            for attr in &rules.unheld {
                if let Some(v) = pushed
                    .and_then(|p| p.get(attr))
                    .or_else(|| wanted.and_then(|w| w.attrs.get(attr)))
                {
                    attrs.insert(*attr, v);
                }
            }
            (AttrHash::of(&attrs, &desired.create_only), attrs)
        };
    let status_of = |remote: &RemoteUser| {
        if remote.active {
            Status::Active
        } else {
            Status::Disabled
        }
    };

    let mut keys: Vec<&SourceKey> = state.users.keys().collect();
    keys.sort_unstable();
    for key in keys {
        let s = &state.users[key];
        if s.status == Status::Removed {
            continue;
        }
        let change = match by_id.get(s.scim_id.as_str()) {
            Some(remote) => {
                claimed.insert(remote.id.as_str());
                let (hash, attrs) =
                    observe(remote, s.attrs.as_deref(), desired_by_key.get(key).copied());
                StateChange::PutUser {
                    key: key.clone(),
                    user: StateUser {
                        scim_id: s.scim_id.clone(),
                        user_name: remote.user_name().unwrap_or_else(|| s.user_name.clone()),
                        hash,
                        status: status_of(remote),
                        ownership: s.ownership,
                        attrs: Some(Box::new(attrs)),
                    },
                }
            }
            None => StateChange::UserStatus {
                key: key.clone(),
                status: Status::Removed,
            },
        };
        out.apply(&change);
        observed.push(change);
    }

    let mut by_name: HashMap<UserName, &RemoteUser> = HashMap::new();
    let mut by_external: HashMap<&str, &RemoteUser> = HashMap::new();
    for u in &target.users {
        if claimed.contains(u.id.as_str()) {
            continue;
        }
        if let Some(name) = u.user_name() {
            by_name.entry(name).or_insert(u);
        }
        if let Some(ext) = u.attrs.get(UserAttr::ExternalId) {
            by_external.entry(ext).or_insert(u);
        }
    }
    // Accounts the state records for keys it marked removed are still those
    // keys' accounts (a leaver's, say): never adopted for another key.
    let removed_owner: HashMap<&str, &SourceKey> = state
        .users
        .iter()
        .filter(|(_, u)| u.status == Status::Removed)
        .map(|(k, u)| (u.scim_id.as_str(), k))
        .collect();
    for d in &desired.users {
        if out.live_user(&d.key).is_some() {
            continue;
        }
        let found = by_name
            .get(&UserName::new(d.user_name()))
            .map(|u| (*u, MatchedBy::UserName))
            .or_else(|| {
                by_external
                    .get(d.key.as_str())
                    .map(|u| (*u, MatchedBy::ExternalId))
            });
        let Some((remote, matched_by)) = found else {
            continue;
        };
        if removed_owner
            .get(remote.id.as_str())
            .is_some_and(|owner| **owner != d.key)
        {
            continue;
        }
        if !claimed.insert(remote.id.as_str()) {
            continue;
        }
        let (hash, attrs) = observe(remote, None, Some(d));
        let user_name = remote
            .user_name()
            .unwrap_or_else(|| UserName::new(d.user_name()));
        out.users.insert(
            d.key.clone(),
            StateUser {
                scim_id: remote.id.clone(),
                user_name: user_name.clone(),
                hash,
                attrs: Some(Box::new(attrs.clone())),
                status: status_of(remote),
                ownership: Ownership::Adopted,
            },
        );
        adoptions.push(Operation::AdoptUser {
            key: d.key.clone(),
            user_name,
            scim_id: remote.id.clone(),
            matched_by,
            attrs,
            active: remote.active,
        });
    }

    // Groups.
    let groups_by_id: HashMap<&str, &RemoteGroup> =
        target.groups.iter().map(|g| (g.id.as_str(), g)).collect();
    let mut claimed_groups: HashSet<&str> = HashSet::new();
    for (key, s) in &state.groups {
        if s.status == Status::Removed {
            continue;
        }
        let change = match groups_by_id.get(s.scim_id.as_str()) {
            Some(remote) => {
                claimed_groups.insert(remote.id.as_str());
                StateChange::PutGroup {
                    key: key.clone(),
                    group: StateGroup {
                        display_name: remote.display_name.clone(),
                        status: Status::Active,
                        ..s.clone()
                    },
                }
            }
            None => StateChange::GroupStatus {
                key: key.clone(),
                status: Status::Removed,
            },
        };
        out.apply(&change);
        observed.push(change);
    }
    let mut groups_by_name: HashMap<&GroupName, &RemoteGroup> = HashMap::new();
    for g in &target.groups {
        if !claimed_groups.contains(g.id.as_str()) {
            groups_by_name.entry(&g.display_name).or_insert(g);
        }
    }
    for g in &desired.groups {
        if out.live_group(&g.key).is_some() {
            continue;
        }
        let Some(remote) = groups_by_name.get(&g.display_name) else {
            continue;
        };
        if !claimed_groups.insert(remote.id.as_str()) {
            continue;
        }
        let group = StateGroup {
            scim_id: remote.id.clone(),
            display_name: remote.display_name.clone(),
            status: Status::Active,
            ownership: Ownership::Adopted,
        };
        out.apply(&StateChange::PutGroup {
            key: g.key.clone(),
            group,
        });
        adoptions.push(Operation::AdoptGroup {
            key: g.key.clone(),
            display_name: remote.display_name.clone(),
            scim_id: remote.id.clone(),
        });
    }

    // Memberships as the target holds them, for the users idsync manages:
    // members resolve by id, then `$ref`, then userName (servers that store
    // userNames). What resolves to no user and was looked up by id with a
    // 404 (`gone_members`) is dangling.
    let resolver = MemberResolver::new(&target.users);
    let mut dangling = Vec::new();
    let key_of: HashMap<&str, &SourceKey> = out
        .users
        .iter()
        .filter(|(_, u)| u.status != Status::Removed)
        .map(|(k, u)| (u.scim_id.as_str(), k))
        .collect();
    let mut memberships = Vec::new();
    for (key, g) in &out.groups {
        if g.status == Status::Removed {
            continue;
        }
        let Some(remote) = groups_by_id.get(g.scim_id.as_str()) else {
            continue;
        };
        let resolved = resolver.resolve(remote);
        let members: BTreeSet<SourceKey> = resolved
            .users
            .iter()
            .filter_map(|id| key_of.get(id.as_str()).map(|k| (*k).clone()))
            .collect();
        let gone: Vec<String> = resolved
            .unresolved
            .into_iter()
            .filter(|v| target.gone_members.contains(v))
            .collect();
        if !gone.is_empty() {
            dangling.push(Operation::RemoveMembers {
                key: key.clone(),
                display_name: g.display_name.clone(),
                members: Vec::new(),
                dangling: gone,
                name_step: None,
            });
        }
        memberships.push(StateChange::SetMembers {
            group: key.clone(),
            users: members,
        });
    }
    for change in memberships {
        out.apply(&change);
        observed.push(change);
    }
    adoptions.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    Reconciled {
        state: out,
        adoptions,
        observed,
        dangling,
    }
}

/// The value the target holds for `attr`, as idsync compares it: for an
/// attribute the target compares ignoring case, the wanted (or else the
/// recorded) value when the held one differs from it only in case. A user
/// adopted now (nothing pushed yet) is compared as
/// [`TargetRules::adopted_holds`] says.
fn held_as(
    attr: UserAttr,
    held: &str,
    pushed: Option<&UserAttrs>,
    wanted: Option<&DesiredUser>,
    rules: &TargetRules,
) -> String {
    let same = |v: &&str| match pushed {
        None => rules.adopted_holds(attr, Some(held), v),
        Some(_) => rules.holds(attr, Some(held), v),
    };
    wanted
        .and_then(|w| w.attrs.get(attr))
        .filter(same)
        .or_else(|| pushed.and_then(|p| p.get(attr)).filter(same))
        .unwrap_or(held)
        .to_owned()
}
