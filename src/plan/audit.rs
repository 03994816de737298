//! `idsync audit`: what the target holds that the directory does not account
//! for — a pure function from the source as mapped, the state as recorded,
//! the target as read, the policy, and the plan `sync --full` would make now
//! (with the guards' verdict on it and the operations that failed last) to
//! the findings. No I/O and no clock: `sync` gathers the input, `report`
//! renders the findings.
//!
//! - **Orphans**: active accounts no source record backs and idsync does not
//!   manage (made by hand, left by an earlier tool).
//! - **Stale access**: accounts idsync manages that are active although the
//!   source says disabled, out of scope or gone, each with why it still is.
//! - **Group access not from the directory**: members of idsync's groups the
//!   source does not put there, and groups idsync neither manages nor was
//!   told to leave alone.
//! - **Drift**: what `sync --full` would repair in the accounts idsync
//!   manages, counted by attribute.
//!
//! What `policy.protect` names is listed apart and is no finding.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;

use crate::model::{
    Desired, DesiredGroup, DesiredUser, GroupKey, GroupName, MemberResolver, RemoteGroup,
    RemoteUser, ResolvedMembers, ScimId, SourceKey, State, StateGroup, Status, TargetSnapshot,
    UserAttr, UserName,
};

use super::guard::GuardStop;
use super::{Operation, Plan, Policy};

/// Everything an audit weighs.
pub struct AuditInput<'a> {
    pub desired: &'a Desired,
    /// The state as recorded (before the `--full` plan folded the target in).
    pub state: &'a State,
    pub target: &'a TargetSnapshot,
    pub policy: &'a Policy,
    /// The plan `sync --full` would make now.
    pub plan: &'a Plan,
    /// The guards' verdict on that plan, if they stop it.
    pub guard: Option<&'a GuardStop>,
    pub failed: &'a FailedOps,
}

/// Operations that failed in the last run that had failures, with their
/// error: user removals by the user's key, membership removals by the
/// group's key.
#[derive(Clone, Debug, Default)]
pub struct FailedOps {
    pub users: HashMap<SourceKey, String>,
    pub groups: HashMap<GroupKey, String>,
}

/// What the audit found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Audit {
    pub counts: Counts,
    pub orphans: Vec<Orphan>,
    pub stale: Vec<Stale>,
    /// Members of groups idsync manages that the source does not put there.
    pub foreign_members: Vec<ForeignMember>,
    /// Groups idsync neither manages nor was told to leave alone.
    pub unmanaged_groups: Vec<UnmanagedGroup>,
    pub drift: Drift,
    /// What `policy.protect` names, listed apart: not findings.
    pub protected: Vec<Protected>,
}

impl Audit {
    /// Nothing found (protected objects aside).
    pub fn is_clean(&self) -> bool {
        self.orphans.is_empty()
            && self.stale.is_empty()
            && self.foreign_members.is_empty()
            && self.unmanaged_groups.is_empty()
            && self.drift.is_empty()
    }

    /// How many findings there are (drift counted once per user and per
    /// missing object).
    pub fn findings(&self) -> usize {
        self.orphans.len()
            + self.stale.len()
            + self.foreign_members.len()
            + self.unmanaged_groups.len()
            + self.drift.objects()
    }
}

/// The sizes the findings are read against.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    pub target_users: usize,
    pub target_groups: usize,
    pub managed_users: usize,
    pub managed_groups: usize,
    pub source_users: usize,
    pub source_groups: usize,
}

/// An active account no source record backs, that idsync does not manage.
#[derive(Clone, Debug, Serialize)]
pub struct Orphan {
    pub scim_id: ScimId,
    pub user_name: Option<String>,
    pub external_id: Option<String>,
    /// `meta.created`, where the target reports it.
    pub created: Option<String>,
    /// The groups it is a member of.
    pub groups: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A managed account active in the target although the source says otherwise.
#[derive(Clone, Debug, Serialize)]
pub struct Stale {
    pub key: SourceKey,
    pub user_name: String,
    pub scim_id: ScimId,
    /// What the source says: disabled in the source, out of scope, not in the source.
    pub source: &'static str,
    /// Why the account is still active.
    pub reason: String,
}

/// A member of a group idsync manages whose membership does not come from
/// the source.
#[derive(Clone, Debug, Serialize)]
pub struct ForeignMember {
    pub group: String,
    pub group_key: GroupKey,
    pub user_name: Option<String>,
    /// The member's source key, when idsync manages the account.
    pub key: Option<SourceKey>,
    pub scim_id: ScimId,
    pub reason: String,
}

/// A group in the target idsync neither manages nor was told to leave alone.
#[derive(Clone, Debug, Serialize)]
pub struct UnmanagedGroup {
    pub scim_id: ScimId,
    pub display_name: String,
    pub members: usize,
    pub created: Option<String>,
}

/// What `sync --full` would repair in what idsync manages.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Drift {
    /// Managed users whose attributes (or `active`) differ from the source.
    pub users: usize,
    /// Per attribute, how many of those users differ in it.
    pub by_attribute: BTreeMap<String, usize>,
    /// Managed users and groups the target no longer has (deleted by hand),
    /// which the plan creates again.
    pub missing_users: usize,
    pub missing_groups: usize,
    /// Memberships idsync pushed that the target no longer holds.
    pub missing_memberships: usize,
}

impl Drift {
    pub fn is_empty(&self) -> bool {
        self.objects() == 0
    }

    fn objects(&self) -> usize {
        self.users + self.missing_users + self.missing_groups + self.missing_memberships
    }
}

/// Something `policy.protect` names that would otherwise be a finding.
#[derive(Clone, Debug, Serialize)]
pub struct Protected {
    /// `user`, `group` or `member`.
    pub kind: &'static str,
    pub name: String,
    pub finding: String,
}

/// Audits the target (see the module's documentation).
pub fn audit(input: &AuditInput<'_>) -> Audit {
    let ctx = Context::new(input);
    let mut audit = Audit {
        counts: ctx.counts(),
        ..Audit::default()
    };
    ctx.orphans(&mut audit);
    ctx.stale(&mut audit);
    ctx.groups(&mut audit);
    audit.drift = ctx.drift();
    audit
        .orphans
        .sort_by(|a, b| (&a.user_name, &a.scim_id).cmp(&(&b.user_name, &b.scim_id)));
    audit.stale.sort_by(|a, b| a.key.cmp(&b.key));
    audit.foreign_members.sort_by(|a, b| {
        (&a.group, &a.user_name, &a.scim_id).cmp(&(&b.group, &b.user_name, &b.scim_id))
    });
    audit
        .unmanaged_groups
        .sort_by(|a, b| (&a.display_name, &a.scim_id).cmp(&(&b.display_name, &b.scim_id)));
    audit
        .protected
        .sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    audit
}

/// The input, indexed.
struct Context<'a> {
    input: &'a AuditInput<'a>,
    /// Live managed users: SCIM id → key.
    managed: HashMap<ScimId, &'a SourceKey>,
    /// Accounts idsync recorded as removed: SCIM id → key.
    removed: HashMap<ScimId, &'a SourceKey>,
    managed_groups: HashMap<&'a str, (&'a GroupKey, &'a StateGroup)>,
    desired_users: HashMap<&'a SourceKey, &'a DesiredUser>,
    desired_groups: HashMap<&'a GroupKey, &'a DesiredGroup>,
    users_by_id: HashMap<&'a str, &'a RemoteUser>,
    /// Each target group's members, resolved, in the target's order.
    resolved: Vec<ResolvedMembers>,
    /// The groups each target user is in.
    groups_of: HashMap<ScimId, Vec<&'a GroupName>>,
    /// Accounts and groups the plan adopts: SCIM id → key.
    adopted: HashMap<&'a str, &'a SourceKey>,
    adopted_groups: HashSet<&'a str>,
}

impl<'a> Context<'a> {
    fn new(input: &'a AuditInput<'a>) -> Context<'a> {
        let (state, target) = (input.state, input.target);
        let resolver = MemberResolver::new(&target.users);
        let resolved: Vec<ResolvedMembers> =
            target.groups.iter().map(|g| resolver.resolve(g)).collect();
        let mut groups_of: HashMap<ScimId, Vec<&GroupName>> = HashMap::new();
        for (g, members) in target.groups.iter().zip(&resolved) {
            for id in &members.users {
                groups_of
                    .entry(id.clone())
                    .or_default()
                    .push(&g.display_name);
            }
        }
        let mut adopted = HashMap::new();
        let mut adopted_groups = HashSet::new();
        for op in &input.plan.operations {
            match op {
                Operation::AdoptUser { key, scim_id, .. } => {
                    adopted.insert(scim_id.as_str(), key);
                }
                Operation::AdoptGroup { scim_id, .. } => {
                    adopted_groups.insert(scim_id.as_str());
                }
                _ => {}
            }
        }
        let users_of = |removed: bool| {
            state
                .users
                .iter()
                .filter(move |(_, u)| (u.status == Status::Removed) == removed)
                .map(|(k, u)| (u.scim_id.to_scim_id(), k))
                .collect()
        };
        Context {
            input,
            managed: users_of(false),
            removed: users_of(true),
            managed_groups: state
                .groups
                .iter()
                .filter(|(_, g)| g.status != Status::Removed)
                .map(|(k, g)| (g.scim_id.as_str(), (k, g)))
                .collect(),
            desired_users: input.desired.users.iter().map(|d| (&d.key, d)).collect(),
            desired_groups: input.desired.groups.iter().map(|g| (&g.key, g)).collect(),
            users_by_id: target.users.iter().map(|u| (u.id.as_str(), u)).collect(),
            resolved,
            groups_of,
            adopted,
            adopted_groups,
        }
    }

    fn counts(&self) -> Counts {
        let i = self.input;
        Counts {
            target_users: i.target.users.len(),
            target_groups: i.target.groups.len(),
            managed_users: self.managed.len(),
            managed_groups: self.managed_groups.len(),
            source_users: i.desired.users.len(),
            source_groups: i.desired.groups.len(),
        }
    }

    fn protects_user(&self, names: &[Option<&UserName>]) -> bool {
        names
            .iter()
            .flatten()
            .any(|n| self.input.policy.protects_user(n))
    }

    /// Active accounts idsync neither manages nor adopts for an active
    /// source user.
    fn orphans(&self, audit: &mut Audit) {
        for u in self.input.target.users.iter().filter(|u| u.active) {
            if self.managed.contains_key(u.id.as_str()) {
                continue;
            }
            let note = match self.adopted.get(u.id.as_str()) {
                Some(key) => match self.desired_users.get(key) {
                    Some(d) if !d.active => Some(format!(
                        "the source has it disabled (key {key}); `sync --full` adopts and disables it"
                    )),
                    _ => continue,
                },
                None => self
                    .removed
                    .get(u.id.as_str())
                    .map(|key| format!("idsync managed it as key {key} and recorded it removed")),
            };
            let user_name = u.user_name();
            let shown = user_name
                .as_ref()
                .map_or_else(|| format!("SCIM id {}", u.id), |n| n.as_str().to_owned());
            if self.protects_user(&[user_name.as_ref()]) {
                audit.protected.push(Protected {
                    kind: "user",
                    name: shown,
                    finding: "active, not managed by idsync and not in the source".into(),
                });
                continue;
            }
            let mut groups: Vec<String> = self
                .groups_of
                .get(&u.id)
                .map(|g| g.iter().map(|n| n.as_str().to_owned()).collect())
                .unwrap_or_default();
            groups.sort();
            audit.orphans.push(Orphan {
                scim_id: u.id.clone(),
                user_name: user_name.map(|n| n.as_str().to_owned()),
                external_id: u.attrs.get(UserAttr::ExternalId).map(str::to_owned),
                created: self.input.target.created.users.get(&u.id).cloned(),
                groups,
                note,
            });
        }
    }

    /// Managed accounts active in the target that the source wants disabled,
    /// out of scope or gone.
    fn stale(&self, audit: &mut Audit) {
        let i = self.input;
        for (key, s) in i
            .state
            .users
            .iter()
            .filter(|(_, s)| s.status != Status::Removed)
        {
            let Some(remote) = self.users_by_id.get(&*s.scim_id.text()) else {
                continue;
            };
            if !remote.active {
                continue;
            }
            let source = match self.desired_users.get(key) {
                Some(d) if d.active => continue,
                Some(_) => "disabled in the source",
                None if i.desired.out_of_scope.contains(key) => "out of scope",
                None => "not in the source",
            };
            let held_name = remote.user_name();
            let user_name = held_name.clone().unwrap_or_else(|| s.user_name.clone());
            if self.protects_user(&[Some(&s.user_name), held_name.as_ref()]) {
                audit.protected.push(Protected {
                    kind: "user",
                    name: user_name.as_str().to_owned(),
                    finding: format!("active although {source} (key {key})"),
                });
                continue;
            }
            audit.stale.push(Stale {
                key: key.clone(),
                user_name: user_name.as_str().to_owned(),
                scim_id: s.scim_id.to_scim_id(),
                source,
                reason: self.stale_reason(key, s.status, source),
            });
        }
    }

    /// Why a stale account is still active.
    fn stale_reason(&self, key: &SourceKey, recorded: Status, source: &str) -> String {
        let i = self.input;
        let mut why = Vec::new();
        if recorded == Status::Disabled {
            why.push(
                "enabled again in the target after idsync disabled it (a plain `sync` does not look; `sync --full` disables it again)"
                    .to_owned(),
            );
        }
        let removal = i.plan.operations.iter().find(|op| {
            matches!(
                op,
                Operation::DisableUser { .. } | Operation::DeleteUser { .. }
            ) && op.user_key() == Some(key)
        });
        match removal {
            // Only `--full` sees it: no "next sync" to wait for.
            Some(op) if recorded == Status::Disabled => {
                why.extend(self.obstacles(op, i.failed.users.get(key)));
            }
            Some(op) => self.pending(op, i.failed.users.get(key), &mut why),
            None if source == "out of scope" && i.policy.skip_out_of_scope_deletions => why.push(
                "left active: policy.skip_out_of_scope_deletions leaves out-of-scope users alone"
                    .to_owned(),
            ),
            None => why.push("left active: the plan does not remove it".to_owned()),
        }
        why.join("; ")
    }

    /// What keeps a removal the plan holds from happening: a guard holds
    /// it, or it failed the last time.
    fn obstacles(&self, op: &Operation, failed: Option<&String>) -> Vec<String> {
        let mut why = Vec::new();
        match self.input.guard {
            Some(stop) if stop.holds(op) => {
                why.push(format!("its removal is held by a guard: {stop}"));
            }
            Some(stop) => why.push(format!("`sync` stops at a guard before it: {stop}")),
            None => {}
        }
        if let Some(error) = failed {
            why.push(format!(
                "its removal failed in the last run that had failures ({error}); the next `sync` tries again"
            ));
        }
        why
    }

    /// Why a removal the plan holds has not happened yet: its obstacles, or
    /// else that it simply comes next.
    fn pending(&self, op: &Operation, failed: Option<&String>, why: &mut Vec<String>) {
        let obstacles = self.obstacles(op, failed);
        if !obstacles.is_empty() {
            why.extend(obstacles);
            return;
        }
        let verb = match op {
            Operation::DeleteUser { .. } | Operation::DeleteGroup { .. } => "deletes",
            Operation::RemoveMembers { .. } => "removes",
            _ => "disables",
        };
        why.push(format!("pending: the next `sync` {verb} it"));
    }

    /// Members of managed groups that the source does not put there, and
    /// groups nobody accounts for.
    fn groups(&self, audit: &mut Audit) {
        let i = self.input;
        for (g, members) in i.target.groups.iter().zip(&self.resolved) {
            if let Some((key, state_group)) = self.managed_groups.get(g.id.as_str()) {
                self.foreign_members(key, state_group, g, members, audit);
                continue;
            }
            if self.adopted_groups.contains(g.id.as_str()) {
                continue;
            }
            if i.policy.protects_group(&g.display_name) {
                audit.protected.push(Protected {
                    kind: "group",
                    name: g.display_name.as_str().to_owned(),
                    finding: "not managed by idsync".into(),
                });
                continue;
            }
            audit.unmanaged_groups.push(UnmanagedGroup {
                scim_id: g.id.clone(),
                display_name: g.display_name.as_str().to_owned(),
                members: members.users.len() + members.unresolved.len(),
                created: i.target.created.groups.get(&g.id).cloned(),
            });
        }
    }

    fn foreign_members(
        &self,
        key: &GroupKey,
        state_group: &StateGroup,
        remote: &RemoteGroup,
        members: &ResolvedMembers,
        audit: &mut Audit,
    ) {
        let i = self.input;
        let wanted = self.desired_groups.get(key);
        let protected_group = i.policy.protects_group(&remote.display_name)
            || i.policy.protects_group(&state_group.display_name);
        for id in &members.users {
            let member = self.managed.get(id.as_str()).copied();
            if let (Some(k), Some(g)) = (member, wanted)
                && g.members.contains(k)
            {
                continue;
            }
            let held_name = self
                .users_by_id
                .get(id.as_str())
                .and_then(|u| u.user_name());
            let recorded = member
                .and_then(|k| i.state.users.get(k))
                .map(|u| &u.user_name);
            let user_name = held_name.clone().or_else(|| recorded.cloned());
            let reason = self.member_reason(key, wanted.is_some(), member);
            if protected_group || self.protects_user(&[held_name.as_ref(), recorded]) {
                let who = user_name
                    .as_ref()
                    .map_or_else(|| format!("SCIM id {id}"), |n| n.as_str().to_owned());
                audit.protected.push(Protected {
                    kind: "member",
                    name: format!("{}: {who}", remote.display_name.as_str()),
                    finding: reason,
                });
                continue;
            }
            audit.foreign_members.push(ForeignMember {
                group: remote.display_name.as_str().to_owned(),
                group_key: key.clone(),
                user_name: user_name.map(|n| n.as_str().to_owned()),
                key: member.cloned(),
                scim_id: id.clone(),
                reason,
            });
        }
    }

    /// Why a member the source does not account for is in a managed group.
    fn member_reason(
        &self,
        group: &GroupKey,
        in_source: bool,
        member: Option<&SourceKey>,
    ) -> String {
        let i = self.input;
        if !in_source {
            let delete = i
                .plan
                .operations
                .iter()
                .find(|op| matches!(op, Operation::DeleteGroup { key, .. } if key == group));
            let mut why = vec!["the group is no longer in the source".to_owned()];
            match delete {
                Some(op) => self.pending(op, None, &mut why),
                None => why.push(
                    "idsync leaves it as it is (policy groups.delete is off, or it is protected)"
                        .to_owned(),
                ),
            }
            return why.join("; ");
        }
        let Some(k) = member else {
            return "added by hand in the target (an account idsync does not manage; idsync never removes it)".to_owned();
        };
        let pushed = i
            .state
            .memberships
            .get(group)
            .is_some_and(|m| m.contains(k));
        let mut why = vec![if pushed {
            "pushed by idsync; the source no longer has it there".to_owned()
        } else {
            "added by hand in the target (a plain `sync` does not look; `sync --full` removes it)"
                .to_owned()
        }];
        let removal = i.plan.operations.iter().find(|op| {
            matches!(op, Operation::RemoveMembers { key, members, .. } if key == group && members.contains(k))
        });
        match removal {
            Some(op) if pushed => self.pending(op, i.failed.groups.get(group), &mut why),
            Some(op) => why.extend(self.obstacles(op, None)),
            None => why.push("the plan does not remove it".to_owned()),
        }
        why.join("; ")
    }

    /// What the `--full` plan repairs in what idsync manages: attribute
    /// changes of managed (not newly adopted) users, objects deleted by hand,
    /// memberships removed by hand.
    fn drift(&self) -> Drift {
        let i = self.input;
        let adopted: HashSet<&SourceKey> = self.adopted.values().copied().collect();
        // Objects idsync manages that the target lost, and the plan creates again.
        let recreated: HashSet<&SourceKey> = i
            .plan
            .operations
            .iter()
            .filter_map(|op| match op {
                Operation::CreateUser { key, .. } if i.state.live_user(key).is_some() => Some(key),
                _ => None,
            })
            .collect();
        let mut users: BTreeSet<&SourceKey> = BTreeSet::new();
        let mut by_attribute: BTreeMap<String, BTreeSet<&SourceKey>> = BTreeMap::new();
        let mut missing_memberships = 0;
        for op in &i.plan.operations {
            let (key, changes, enable) = match op {
                Operation::UpdateUser { key, changes, .. } => (key, changes, false),
                Operation::EnableUser { key, changes, .. } => (key, changes, true),
                Operation::AddMembers { key, members, .. } => {
                    let pushed = i.state.memberships.get(key);
                    missing_memberships += members
                        .iter()
                        .filter(|m| pushed.is_some_and(|p| p.contains(*m)))
                        .filter(|m| !recreated.contains(m))
                        .count();
                    continue;
                }
                _ => continue,
            };
            if adopted.contains(key) {
                continue;
            }
            users.insert(key);
            if enable {
                by_attribute.entry("active".into()).or_default().insert(key);
            }
            for attr in changes.keys() {
                by_attribute
                    .entry(attr.to_string())
                    .or_default()
                    .insert(key);
            }
        }
        let missing_users = recreated.len();
        let missing_groups = i
            .plan
            .operations
            .iter()
            .filter(|op| matches!(op, Operation::CreateGroup { key, .. } if i.state.live_group(key).is_some()))
            .count();
        Drift {
            users: users.len(),
            by_attribute: by_attribute
                .into_iter()
                .map(|(a, k)| (a, k.len()))
                .collect(),
            missing_users,
            missing_groups,
            missing_memberships,
        }
    }
}

#[cfg(test)]
mod tests;
