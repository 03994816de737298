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
    ScimId, SourceKey, State, StateChange, StateGroup, StateUser, Status, TargetSnapshot, UserAttr,
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
/// target's contents, comparing as `rules` say the target holds values. In
/// steps: users idsync manages as found, desired users adopted, the same for
/// groups, then memberships as the target holds them.
pub(super) fn reconcile(
    desired: &Desired,
    state: &State,
    target: &TargetSnapshot,
    rules: &TargetRules,
) -> Reconciled {
    let mut out = state.clone();
    out.memberships.clear();
    let mut r = Reconciling {
        desired,
        state,
        target,
        rules,
        out,
        adoptions: Vec::new(),
        observed: Vec::new(),
        claimed: HashSet::new(),
        claimed_groups: HashSet::new(),
        groups_by_id: target.groups.iter().map(|g| (g.id.as_str(), g)).collect(),
    };
    r.observe_users();
    r.adopt_users();
    r.observe_groups();
    r.adopt_groups();
    let dangling = r.observe_memberships();
    let mut adoptions = r.adoptions;
    adoptions.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    Reconciled {
        state: r.out,
        adoptions,
        observed: r.observed,
        dangling,
    }
}

/// A reconcile under way: its inputs, and what it has concluded so far.
struct Reconciling<'a> {
    desired: &'a Desired,
    state: &'a State,
    target: &'a TargetSnapshot,
    rules: &'a TargetRules,
    /// The state as the target holds it, so far.
    out: State,
    adoptions: Vec<Operation>,
    observed: Vec<StateChange>,
    /// Target users and groups already someone's (by id).
    claimed: HashSet<&'a str>,
    claimed_groups: HashSet<&'a str>,
    groups_by_id: HashMap<&'a str, &'a RemoteGroup>,
}

fn status_of(remote: &RemoteUser) -> Status {
    if remote.active {
        Status::Active
    } else {
        Status::Disabled
    }
}

impl<'a> Reconciling<'a> {
    /// A state change concluded from the target: applied and kept.
    fn observe(&mut self, change: StateChange) {
        self.out.apply(&change);
        self.observed.push(change);
    }

    /// What `remote` holds of the attributes idsync manages for this user
    /// (`pushed`: as recorded; `wanted`: as the source says), and its hash.
    fn held_attrs(
        &self,
        remote: &RemoteUser,
        pushed: Option<&UserAttrs>,
        wanted: Option<&DesiredUser>,
    ) -> (AttrHash, UserAttrs) {
        let rules = self.rules;
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
        (AttrHash::of(&attrs, &self.desired.create_only), attrs)
    }

    /// Each live user idsync manages as the target holds it, or removed when
    /// the target has no such id.
    fn observe_users(&mut self) {
        let by_id: HashMap<&str, &RemoteUser> = self
            .target
            .users
            .iter()
            .map(|u| (u.id.as_str(), u))
            .collect();
        let desired_by_key: HashMap<&SourceKey, &DesiredUser> =
            self.desired.users.iter().map(|d| (&d.key, d)).collect();
        let mut keys: Vec<&SourceKey> = self.state.users.keys().collect();
        keys.sort_unstable();
        for key in keys {
            let s = &self.state.users[key];
            if s.status == Status::Removed {
                continue;
            }
            let change = match by_id.get(&*s.scim_id.text()) {
                Some(remote) => {
                    self.claimed.insert(remote.id.as_str());
                    let (hash, attrs) = self.held_attrs(
                        remote,
                        s.attrs.as_deref(),
                        desired_by_key.get(key).copied(),
                    );
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
            self.observe(change);
        }
    }

    /// Desired users idsync does not manage yet, found in the target by
    /// `userName`, then `externalId`, adopted — never an account the state
    /// records as another key's.
    fn adopt_users(&mut self) {
        let mut by_name: HashMap<UserName, &RemoteUser> = HashMap::new();
        let mut by_external: HashMap<&str, &RemoteUser> = HashMap::new();
        for u in &self.target.users {
            if self.claimed.contains(u.id.as_str()) {
                continue;
            }
            if let Some(name) = u.user_name() {
                by_name.entry(name).or_insert(u);
            }
            if let Some(ext) = u.attrs.get(UserAttr::ExternalId) {
                by_external.entry(ext).or_insert(u);
            }
        }
        // Accounts the state records for keys it marked removed are still
        // those keys' accounts (a leaver's, say): never adopted for another key.
        let removed_owner: HashMap<ScimId, &SourceKey> = self
            .state
            .users
            .iter()
            .filter(|(_, u)| u.status == Status::Removed)
            .map(|(k, u)| (u.scim_id.to_scim_id(), k))
            .collect();
        for d in &self.desired.users {
            if self.out.live_user(&d.key).is_some() {
                continue;
            }
            let found = by_name
                .get(&d.user_name())
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
            if !self.claimed.insert(remote.id.as_str()) {
                continue;
            }
            self.adopt_user(d, remote, matched_by);
        }
    }

    fn adopt_user(&mut self, d: &DesiredUser, remote: &RemoteUser, matched_by: MatchedBy) {
        let (hash, attrs) = self.held_attrs(remote, None, Some(d));
        let user_name = remote.user_name().unwrap_or_else(|| d.user_name());
        self.out.users.insert(
            d.key.clone(),
            StateUser {
                scim_id: (&remote.id).into(),
                user_name: user_name.clone(),
                hash,
                attrs: Some(Box::new(attrs.clone())),
                status: status_of(remote),
                ownership: Ownership::Adopted,
            },
        );
        self.adoptions.push(Operation::AdoptUser {
            key: d.key.clone(),
            user_name,
            scim_id: remote.id.clone(),
            matched_by,
            attrs,
            active: remote.active,
        });
    }

    /// Each live group idsync manages under the name the target holds, or
    /// removed when the target has no such id.
    fn observe_groups(&mut self) {
        for (key, s) in &self.state.groups {
            if s.status == Status::Removed {
                continue;
            }
            let change = match self.groups_by_id.get(s.scim_id.as_str()) {
                Some(remote) => {
                    self.claimed_groups.insert(remote.id.as_str());
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
            self.observe(change);
        }
    }

    /// Desired groups idsync does not manage yet, found by `displayName`,
    /// adopted.
    fn adopt_groups(&mut self) {
        let mut groups_by_name: HashMap<&GroupName, &RemoteGroup> = HashMap::new();
        for g in &self.target.groups {
            if !self.claimed_groups.contains(g.id.as_str()) {
                groups_by_name.entry(&g.display_name).or_insert(g);
            }
        }
        for g in &self.desired.groups {
            if self.out.live_group(&g.key).is_some() {
                continue;
            }
            let Some(remote) = groups_by_name.get(&g.display_name) else {
                continue;
            };
            if !self.claimed_groups.insert(remote.id.as_str()) {
                continue;
            }
            let group = StateGroup {
                scim_id: remote.id.clone(),
                display_name: remote.display_name.clone(),
                status: Status::Active,
                ownership: Ownership::Adopted,
            };
            self.out.apply(&StateChange::PutGroup {
                key: g.key.clone(),
                group,
            });
            self.adoptions.push(Operation::AdoptGroup {
                key: g.key.clone(),
                display_name: remote.display_name.clone(),
                scim_id: remote.id.clone(),
            });
        }
    }

    /// Memberships as the target holds them, for the users idsync manages:
    /// members resolve by id, then `$ref`, then userName (servers that store
    /// userNames). What resolves to no user and was looked up by id with a
    /// 404 (`gone_members`) is dangling: returned as removals.
    fn observe_memberships(&mut self) -> Vec<Operation> {
        let resolver = MemberResolver::new(&self.target.users);
        let mut dangling = Vec::new();
        let key_of: HashMap<ScimId, &SourceKey> = self
            .out
            .users
            .iter()
            .filter(|(_, u)| u.status != Status::Removed)
            .map(|(k, u)| (u.scim_id.to_scim_id(), k))
            .collect();
        let mut memberships = Vec::new();
        for (key, g) in &self.out.groups {
            if g.status == Status::Removed {
                continue;
            }
            let Some(remote) = self.groups_by_id.get(g.scim_id.as_str()) else {
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
                .filter(|v| self.target.gone_members.contains(v))
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
            self.observe(change);
        }
        dangling
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
