//! The planner proper: desired snapshot against last pushed state, user by user
//! and group by group.

use std::collections::{BTreeSet, HashSet};

use crate::model::{
    Desired, DesiredGroup, DesiredUser, Domain, FastSet, SourceKey, State, StateUser, Status,
    UserAttr, UserAttrs,
};

use super::names;
use super::reconcile::reconcile;
use super::{
    Action, Change, Changes, OnRename, Operation, Plan, PlanningInput, Policy, RemoveAction,
    Skipped, Summary,
};

/// Makes the plan: for `--full`, first folds what the target holds into the
/// state (adoptions and observations), then diffs the desired snapshot against
/// the state.
pub fn plan(input: &PlanningInput) -> Plan {
    let policy = &input.options.policy;
    let desired = &input.desired;
    let reconciled = input
        .target
        .as_ref()
        .map(|target| reconcile(desired, &input.state, target, &input.options.target_rules));
    let state = reconciled.as_ref().map_or(&input.state, |r| &r.state);
    // Attributes never planned as changes: create-only ones, and those the
    // target does not hold.
    let skip: BTreeSet<UserAttr> = desired
        .create_only
        .union(&input.options.target_rules.unheld)
        .copied()
        .collect();

    let (mut ops, mut skipped, mut warnings) = diff_state(desired, state, policy, &skip);
    let managed_users = state.managed_users() as u64;
    let managed_memberships = state.managed_memberships() as u64;
    let mut observed = Vec::new();
    if let Some(r) = reconciled {
        let mut adoptions = r.adoptions;
        adoptions.append(&mut ops);
        ops = adoptions;
        if !r.dangling.is_empty() {
            let (dangling, held) = policy.actions.split(r.dangling);
            ops.extend(dangling);
            // Stable: the order within a phase and subject stays.
            ops.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
            if !held.is_empty() {
                skipped.extend(held);
                skipped.sort_by(|a, b| a.op.sort_key().cmp(&b.op.sort_key()));
            }
        }
        observed = r.observed;
    }
    let summary = Summary::of(&ops);
    if !input.is_full() {
        warnings.extend(input.options.notes.iter().map(|note| {
            format!(
                "the target did not keep values as sent: {note}; not sent again while the source value stays the same (`plan --full` compares what the target holds)"
            )
        }));
    }
    if let Some(limit) = input.options.user_limit {
        let total = managed_users + summary.create_users;
        if total > limit {
            warnings.push(format!(
                "the target directory would hold {total} managed users, above target.user_limit {limit}"
            ));
        }
    }
    Plan {
        fingerprint: fingerprint(
            &input.options.config_fingerprint,
            input.state.generation,
            input.is_full(),
            &ops,
            &skipped,
        ),
        full: input.is_full(),
        summary,
        operations: ops,
        skipped,
        warnings,
        ignored_members: desired.ignored_members as u64,
        // Only groups that would be synced hold anything back.
        held_groups: if policy.provision_groups {
            desired.held_groups.len() as u64
        } else {
            0
        },
        source_users: desired.users.len() as u64,
        managed_users,
        managed_memberships,
        observed,
        member_names: Default::default(),
    }
}

/// Ties a plan to the config and mapping (`config`, which covers the
/// `policy.actions` switches too), the state generation it was made against,
/// whether it was a `--full` plan, and its operations and skipped operations
/// (a digest of their JSON), so a saved plan edited after review no longer
/// matches.
pub fn fingerprint(
    config: &str,
    generation: i64,
    full: bool,
    operations: &[Operation],
    skipped: &[Skipped],
) -> String {
    // The JSON of typed operations is canonical: fields in declaration order,
    // attribute maps sorted, and a plan read back from a file writes the same.
    // Streamed into the hasher: a million creates would be a gigabyte of text.
    let mut hasher = blake3::Hasher::new();
    {
        use std::io::Write as _;
        let mut buffered = std::io::BufWriter::with_capacity(1 << 16, &mut hasher);
        serde_json::to_writer(&mut buffered, operations).expect("operations always serialise");
        // Only when there are any: a plan without skipped operations keeps
        // the fingerprint it always had.
        if !skipped.is_empty() {
            serde_json::to_writer(&mut buffered, skipped).expect("operations always serialise");
        }
        buffered.flush().expect("hashing cannot fail");
    }
    let digest = hasher.finalize().to_hex();
    format!(
        "{config}-{generation}{}-{}",
        if full { "-full" } else { "" },
        &digest[..32]
    )
}

/// The operations (sorted), the operations their switched-off action holds
/// back (sorted), and the warnings that take `state` to `desired`.
fn diff_state(
    desired: &Desired,
    state: &State,
    policy: &Policy,
    skip: &BTreeSet<UserAttr>,
) -> (Vec<Operation>, Vec<Skipped>, Vec<String>) {
    let mut ops = Vec::new();
    let mut skipped = Vec::new();
    // The mapping's own come first: they are about the config.
    let mut warnings = desired.warnings.clone();
    // Managed users disabled in the source that leave as leavers do
    // (`disabled_action: remove_action` under `remove_action: delete`).
    let mut disabled: FastSet<&SourceKey> = FastSet::default();

    // Users that will exist in the target once the user phases ran. Every
    // desired user with a live state record is in it (whatever else happens to
    // that user below), so it also tells which live users the source still has.
    let mut present = Present::new(state, desired.users.len());

    // Desired users come in key order: a state recorded in key order is
    // walked rather than looked up.
    let mut records = state.user_cursor();
    for d in &desired.users {
        let (position, live) = match records.find(&d.key) {
            Some((i, s)) => (Some(i), Some(s).filter(|s| s.status != Status::Removed)),
            None => (None, None),
        };
        if let Some(domain) = unverified_domain(d, &policy.verified_domains) {
            warnings.push(format!(
                "user {:?} ({}) skipped: its email domain {:?} is not in target.verified_domains",
                d.user_name(),
                d.origin,
                domain.folded()
            ));
            if live.is_some() {
                present.insert(position, &d.key);
            }
            continue;
        }
        // The emptiness test spares building every userName when nothing is protected.
        if !policy.protected_users.is_empty()
            && (policy.protects_user(&d.user_name())
                || live.is_some_and(|s| policy.protects_user(&s.user_name)))
        {
            if live.is_some() {
                present.insert(position, &d.key);
            }
            continue;
        }
        match live {
            None => {
                if d.active {
                    ops.push(Operation::CreateUser {
                        key: d.key.clone(),
                        user_name: d.user_name(),
                        attrs: d.attrs.clone(),
                        name_step: None,
                    });
                    present.insert(position, &d.key);
                }
            }
            Some(_) if !d.active && policy.deletes_disabled_users() => {
                // Removed below as a leaver is: out of its groups, then deleted.
                disabled.insert(&d.key);
            }
            Some(s) => {
                present.insert(position, &d.key);
                plan_existing_user(d, s, skip, &mut ops);
            }
        }
    }

    // Users we manage that the source no longer wants.
    let mut leaving: Vec<(&SourceKey, &StateUser)> = state
        .users
        .iter()
        .enumerate()
        .filter(|(i, (_, s))| s.status != Status::Removed && !present.at(*i))
        .map(|(_, user)| user)
        .collect();
    leaving.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (key, s) in leaving {
        if policy.protects_user(&s.user_name) {
            continue;
        }
        let out_of_scope = desired.out_of_scope.contains(key);
        if out_of_scope && policy.skip_out_of_scope_deletions {
            continue;
        }
        let reason = if disabled.contains(key) {
            "inactive in the source"
        } else if desired.unassigned_users.contains(key) {
            "no longer assigned"
        } else if out_of_scope {
            "out of scope"
        } else {
            "not in the source"
        }
        .to_string();
        match policy.remove_action {
            RemoveAction::Disable if s.status == Status::Active => {
                ops.push(Operation::DisableUser {
                    key: key.clone(),
                    user_name: s.user_name.clone(),
                    scim_id: s.scim_id.to_scim_id(),
                    reason,
                    name_step: None,
                })
            }
            RemoveAction::Disable => {}
            RemoveAction::Delete => ops.push(Operation::DeleteUser {
                key: key.clone(),
                user_name: s.user_name.clone(),
                scim_id: s.scim_id.to_scim_id(),
                reason,
                name_step: None,
            }),
        }
    }

    if policy.provision_groups {
        plan_groups(
            desired,
            state,
            policy,
            &present,
            (&mut ops, &mut skipped),
            &mut warnings,
        );
    }
    // What is switched off is set aside before userNames are sequenced: a
    // name a skipped removal or rename would free stays taken.
    let (mut ops, held) = policy.actions.split(ops);
    skipped.extend(held);
    skipped.sort_by(|a, b| a.op.sort_key().cmp(&b.op.sort_key()));

    if names::may_move_names(&ops, state) {
        // Only when a userName moves between users: a set of every key.
        let desired_keys: FastSet<&SourceKey> = desired.users.iter().map(|d| &d.key).collect();
        let is_desired = |k: &SourceKey| desired_keys.contains(k);
        ops = names::sequence(ops, state, &is_desired, policy, &mut warnings);
    } else {
        ops.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    }
    (ops, skipped, warnings)
}

/// Users that will exist in the target once the user phases ran: those the
/// state holds marked by their position in it (no set of a million keys to
/// build and probe), the others (created now) by key.
struct Present<'a> {
    state: &'a State,
    by_position: Vec<bool>,
    created: FastSet<&'a SourceKey>,
    /// How many desired users were marked.
    marked: usize,
}

impl<'a> Present<'a> {
    /// For `wanted` desired users: those beyond the state's count are likely
    /// created, and a first sync's million are not rehashed as they come.
    fn new(state: &'a State, wanted: usize) -> Self {
        Present {
            state,
            by_position: vec![false; state.users.len()],
            created: FastSet::with_capacity_and_hasher(
                wanted.saturating_sub(state.users.len()),
                Default::default(),
            ),
            marked: 0,
        }
    }

    /// Marks the desired user `key`, at `position` in the state if it has one.
    fn insert(&mut self, position: Option<usize>, key: &'a SourceKey) {
        self.marked += 1;
        match position {
            Some(i) => self.by_position[i] = true,
            None => {
                self.created.insert(key);
            }
        }
    }

    /// Whether the state's user at `position` is present.
    fn at(&self, position: usize) -> bool {
        self.by_position[position]
    }

    /// Whether every one of `desired`'s users was marked (each is marked at
    /// most once): then every group member, being one of them, is present.
    fn holds_all(&self, desired: &Desired) -> bool {
        self.marked == desired.users.len()
    }

    fn contains(&self, key: &SourceKey) -> bool {
        match self.state.users.get_index_of(key) {
            Some(i) => self.by_position[i],
            None => self.created.contains(key),
        }
    }
}

/// The user's email domain, when a verified-domains list is set and the domain
/// is not on it.
fn unverified_domain(d: &DesiredUser, verified: &BTreeSet<Domain>) -> Option<Domain> {
    if verified.is_empty() {
        return None;
    }
    let domain = d.email().domain();
    (!verified.contains(&domain)).then_some(domain)
}

fn plan_existing_user(
    d: &DesiredUser,
    s: &StateUser,
    skip: &BTreeSet<UserAttr>,
    ops: &mut Vec<Operation>,
) {
    // `PlanningInput::new` loaded the pushed attributes of exactly the users
    // whose hash differs, so "not loaded" means "unchanged" and the hash need
    // not be computed a second time.
    let changes = match &s.attrs {
        Some(old) => diff(Some(old), &d.attrs, skip),
        None => Changes::new(),
    };
    let common = |changes| {
        (
            d.key.clone(),
            d.user_name(),
            s.scim_id.to_scim_id(),
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
                    name_step: None,
                });
            }
            ops.push(Operation::DisableUser {
                key: d.key.clone(),
                user_name: d.user_name(),
                scim_id: s.scim_id.to_scim_id(),
                reason: "inactive in the source".to_string(),
                name_step: None,
            });
        }
        _ if !changes.is_empty() => {
            let (key, user_name, scim_id, changes) = common(changes);
            ops.push(Operation::UpdateUser {
                key,
                user_name,
                scim_id,
                changes,
                name_step: None,
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
        if create_only.contains(&attr) {
            continue;
        }
        if old.get(attr) != Some(value) {
            changes.insert(
                attr,
                Change {
                    old: old.get(attr).map(str::to_owned),
                    new: Some(value.to_owned()),
                },
            );
        }
    }
    for (attr, value) in old {
        if !new.contains_key(attr) && !create_only.contains(&attr) && attr != UserAttr::UserName {
            changes.insert(
                attr,
                Change {
                    old: Some(value.to_owned()),
                    new: None,
                },
            );
        }
    }
    changes
}

/// The groups' operations into `out.0`; a rename by recreation that a
/// switched-off action forbids into `out.1` (the group keeps its old name and
/// its members are kept in step).
fn plan_groups(
    desired: &Desired,
    state: &State,
    policy: &Policy,
    present: &Present,
    out: (&mut Vec<Operation>, &mut Vec<Skipped>),
    warnings: &mut Vec<String>,
) {
    let (ops, skipped) = out;
    let no_members = BTreeSet::new();
    // A group's members are in-scope users of `desired` (`DesiredGroup`):
    // when all of those are present, no member needs looking up.
    let all_present = present.holds_all(desired);
    let mut desired_keys = HashSet::new();

    for g in &desired.groups {
        desired_keys.insert(&g.key);
        let live = state.live_group(&g.key);
        if policy.protects_group(&g.display_name)
            || live.is_some_and(|s| policy.protects_group(&s.display_name))
        {
            continue;
        }
        let mut wanted: Vec<&SourceKey> = g
            .members
            .iter()
            .filter(|m| all_present || present.contains(m))
            .collect();
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
                    let recreate_off = [Action::CreateGroups, Action::DeleteGroups]
                        .into_iter()
                        .find(|a| !policy.actions.allows(*a));
                    match (policy.target_renames_groups, policy.on_rename, recreate_off) {
                        (_, OnRename::Recreate, Some(action_off)) => {
                            skipped.extend(
                                [
                                    Operation::CreateGroup {
                                        key: g.key.clone(),
                                        display_name: g.display_name.clone(),
                                    },
                                    Operation::DeleteGroup {
                                        key: g.key.clone(),
                                        scim_id: s.scim_id.clone(),
                                        display_name: s.display_name.clone(),
                                        reason: format!("renamed to {:?}", g.display_name.as_str()),
                                    },
                                ]
                                .map(|op| Skipped { op, action_off }),
                            );
                        }
                        (_, OnRename::Recreate, None) => {
                            ops.push(Operation::CreateGroup {
                                key: g.key.clone(),
                                display_name: g.display_name.clone(),
                            });
                            push_members(ops, g, wanted.iter().copied(), true, policy.member_chunk);
                            ops.push(Operation::DeleteGroup {
                                key: g.key.clone(),
                                scim_id: s.scim_id.clone(),
                                display_name: s.display_name.clone(),
                                reason: format!("renamed to {:?}", g.display_name.as_str()),
                            });
                            continue;
                        }
                        (true, OnRename::Keep, _) => ops.push(Operation::UpdateGroup {
                            key: g.key.clone(),
                            scim_id: s.scim_id.clone(),
                            display_name: g.display_name.clone(),
                            old_display_name: s.display_name.clone(),
                        }),
                        (false, OnRename::Keep, _) => warnings.push(format!(
                            "group {:?} is now named {:?} in the source; the target cannot rename groups, so it keeps its old name (set policy.groups.on_rename: recreate to replace it)",
                            s.display_name.as_str(),
                            g.display_name.as_str()
                        )),
                    }
                }
                let (adds, removes) = sorted_diff(&wanted, pushed);
                push_members(ops, g, adds.into_iter(), true, policy.member_chunk);
                push_members(ops, g, removes.into_iter(), false, policy.member_chunk);
            }
        }
    }

    for held in &desired.held_groups {
        desired_keys.insert(&held.key);
        warnings.push(format!(
            "group {} ({}): {}",
            held.key, held.origin, held.reason
        ));
    }
    if policy.delete_groups {
        for (key, s) in &state.groups {
            if s.status == Status::Removed
                || desired_keys.contains(key)
                || policy.protects_group(&s.display_name)
            {
                continue;
            }
            // A group the source still has left because its assignment did.
            let reason = desired
                .unassigned_groups
                .get(key)
                .map_or("not in the source", String::as_str);
            ops.push(Operation::DeleteGroup {
                key: key.clone(),
                scim_id: s.scim_id.clone(),
                display_name: s.display_name.clone(),
                reason: reason.to_string(),
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
                dangling: Vec::new(),
                name_step: None,
            }
        });
    }
}
