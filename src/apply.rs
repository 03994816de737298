//! The executor: applies a checked plan to the SCIM target in dependency order
//! (adopt → create users → update users → create groups → rename groups → add
//! members → remove members → disable/delete users → delete groups), with bounded
//! concurrency, and commits each operation's outcome to the state DB as it
//! completes. One failing object is recorded with its reason and the run goes
//! on; a refused token stops it at once, and so does a target where most calls
//! fail. SIGTERM lets the operations in flight finish and commit, then stops.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use futures_util::stream;

use crate::model::{AttrHash, GroupKey, ScimId, SourceKey, UserAttr, UserAttrs};
use crate::plan::{Changes, Operation, Phase};
use crate::report::FailedOp;
use crate::scim::{ScimClient, ScimError};
use crate::state::{
    OpRecord, Ownership, RunId, State, StateChange, StateDb, StateError, StateGroup, StateUser,
    Status,
};

/// Stop early when at least this many operations ran and more than half failed:
/// the target is broken, and hammering it helps nobody.
const FAILURE_BUDGET_MIN_OPS: u64 = 20;

/// Creates in flight per concurrency slot between two journal marks: large
/// enough to keep the pipeline full, small enough that a crash costs few
/// lookups on resume.
const CREATE_WINDOW_PER_SLOT: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    State(#[from] StateError),
}

/// Why the executor stopped before the end of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// 401/403: the token was refused.
    Unauthorized(String),
    /// Most operations failed.
    FailureBudget { failed: u64, done: u64 },
    /// SIGTERM or Ctrl-C.
    Signal,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Unauthorized(d) => write!(f, "the target refused the token: {d}"),
            Stop::FailureBudget { failed, done } => {
                write!(
                    f,
                    "{failed} of {done} operations failed, so the cycle stopped"
                )
            }
            Stop::Signal => write!(
                f,
                "interrupted by a signal; operations in flight were committed"
            ),
        }
    }
}

/// What applying a plan did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub applied: u64,
    pub failed: u64,
    pub skipped: u64,
    pub failures: Vec<FailedOp>,
    pub stopped: Option<Stop>,
}

/// What one operation needs, resolved before its phase starts, so the request
/// futures own their inputs while the commit loop owns the state.
enum Job {
    None,
    CreateUser {
        attrs: UserAttrs,
        lookup_first: bool,
    },
    PatchUser {
        id: ScimId,
        changes: Vec<(UserAttr, Option<String>)>,
        active: Option<bool>,
    },
    DeleteUser {
        id: ScimId,
    },
    CreateGroup {
        name: String,
        external_id: String,
        lookup_first: bool,
    },
    RenameGroup {
        id: ScimId,
        name: String,
    },
    Members {
        group: ScimId,
        add: bool,
        ids: Vec<ScimId>,
        keys: Vec<SourceKey>,
        unresolved: usize,
    },
    DeleteGroup {
        id: ScimId,
    },
    Skip(String),
}

/// The request's result, before it is committed.
enum Done {
    Ok,
    Created {
        id: ScimId,
        ownership: Ownership,
        attrs: UserAttrs,
    },
    GroupCreated {
        id: ScimId,
        ownership: Ownership,
    },
    Gone,
    Skipped(String),
    Failed(ScimError),
}

pub struct Executor<'a> {
    pub client: ScimClient,
    pub db: &'a mut StateDb,
    pub state: State,
    pub create_only: BTreeSet<UserAttr>,
    pub concurrency: usize,
    pub shutdown: Arc<AtomicBool>,
    pub progress: indicatif::ProgressBar,
}

impl Executor<'_> {
    /// Applies `ops` (already checked by the guards) as run `command`.
    pub async fn run(
        mut self,
        command: &str,
        ops: &[Operation],
    ) -> Result<(Outcome, RunId), ApplyError> {
        let interrupted: HashSet<(String, String)> =
            self.db.interrupted_ops()?.into_iter().collect();
        if !interrupted.is_empty() {
            tracing::warn!(
                operations = interrupted.len(),
                "a previous run was interrupted; creates it had started are looked up before being sent again"
            );
        }
        let journal: Vec<(&'static str, String)> = ops
            .iter()
            .map(|op| (op.name(), op.subject().to_string()))
            .collect();
        let run = self.db.begin_run(command, &journal)?;

        // Updates need the last pushed attributes (a saved plan arrives without them).
        let need: Vec<SourceKey> = ops
            .iter()
            .filter_map(|op| match op {
                Operation::UpdateUser { key, .. } | Operation::EnableUser { key, .. } => {
                    Some(key.clone())
                }
                _ => None,
            })
            .filter(|k| self.state.users.get(k).is_some_and(|u| u.attrs.is_none()))
            .collect();
        self.db.load_attrs(&mut self.state, need.iter())?;

        let mut outcome = Outcome::default();
        self.progress.set_length(ops.len() as u64);
        let mut seq = 0usize;
        while seq < ops.len() && outcome.stopped.is_none() {
            let phase = ops[seq].phase();
            let mut end = ops[seq..]
                .iter()
                .position(|op| op.phase() != phase)
                .map_or(ops.len(), |n| seq + n);
            if matches!(phase, Phase::CreateUsers | Phase::CreateGroups) {
                // Creates run in windows, each marked started just before it is
                // sent: after a crash only one window is looked up again.
                end = end.min(seq + self.concurrency.max(1) * CREATE_WINDOW_PER_SLOT);
            }
            self.run_phase(run, seq, &ops[seq..end], phase, &interrupted, &mut outcome)
                .await?;
            seq = end;
        }
        outcome.skipped +=
            (ops.len() as u64).saturating_sub(outcome.applied + outcome.failed + outcome.skipped);
        self.progress.finish_and_clear();
        Ok((outcome, run))
    }

    async fn run_phase(
        &mut self,
        run: RunId,
        first_seq: usize,
        ops: &[Operation],
        phase: Phase,
        interrupted: &HashSet<(String, String)>,
        outcome: &mut Outcome,
    ) -> Result<(), ApplyError> {
        if matches!(phase, Phase::CreateUsers | Phase::CreateGroups) {
            // Marked before any of this window's requests leaves: after a crash,
            // these are looked up before being created again, so nothing is
            // duplicated.
            self.db
                .mark_started_from(run, first_seq as i64, ops.len() as i64)?;
        }
        let jobs: Vec<(usize, Job)> = ops
            .iter()
            .enumerate()
            .map(|(i, op)| (first_seq + i, self.prepare(op, interrupted)))
            .collect();
        let client = self.client.clone();
        let shutdown = self.shutdown.clone();
        // Set once the run must stop: no new request starts. Separate from
        // `shutdown`, which belongs to the caller (a daemon reads it to decide
        // whether to exit, so a failed cycle must not set it).
        let halt = Arc::new(AtomicBool::new(false));
        let mut results = stream::iter(jobs)
            .map(|(seq, job)| {
                let client = client.clone();
                let shutdown = shutdown.clone();
                let halt = halt.clone();
                async move {
                    if shutdown.load(Ordering::SeqCst) || halt.load(Ordering::SeqCst) {
                        return (seq, job, Done::Skipped("interrupted".into()));
                    }
                    let done = execute(&client, &job).await;
                    (seq, job, done)
                }
            })
            .buffer_unordered(self.concurrency.max(1));

        while let Some((seq, job, done)) = results.next().await {
            let op = &ops[seq - first_seq];
            self.commit(run, seq, op, job, done, outcome)?;
            self.progress.inc(1);
            if outcome.stopped.is_none() {
                if self.shutdown.load(Ordering::SeqCst) {
                    outcome.stopped = Some(Stop::Signal);
                } else {
                    let done = outcome.applied + outcome.failed;
                    if done >= FAILURE_BUDGET_MIN_OPS && outcome.failed * 2 > done {
                        outcome.stopped = Some(Stop::FailureBudget {
                            failed: outcome.failed,
                            done,
                        });
                    }
                }
            }
            // Also when `commit` stopped the run (a refused token).
            if outcome.stopped.is_some() {
                // Let requests in flight finish and commit; start no new ones.
                halt.store(true, Ordering::SeqCst);
            }
        }
        Ok(())
    }

    fn live_user(&self, key: &SourceKey) -> Option<&StateUser> {
        self.state
            .users
            .get(key)
            .filter(|u| u.status != Status::Removed)
    }

    fn live_group(&self, key: &GroupKey) -> Option<&StateGroup> {
        self.state
            .groups
            .get(key)
            .filter(|g| g.status != Status::Removed)
    }

    fn prepare(&self, op: &Operation, interrupted: &HashSet<(String, String)>) -> Job {
        let was_started =
            || interrupted.contains(&(op.name().to_string(), op.subject().to_string()));
        match op {
            Operation::AdoptUser { .. } | Operation::AdoptGroup { .. } => Job::None,
            Operation::CreateUser { changes, .. } => Job::CreateUser {
                attrs: new_values(changes),
                lookup_first: was_started(),
            },
            Operation::UpdateUser {
                scim_id, changes, ..
            } => Job::PatchUser {
                id: scim_id.clone(),
                changes: patch_list(changes),
                active: None,
            },
            Operation::EnableUser {
                scim_id, changes, ..
            } => Job::PatchUser {
                id: scim_id.clone(),
                changes: patch_list(changes),
                active: Some(true),
            },
            Operation::DisableUser { scim_id, .. } => Job::PatchUser {
                id: scim_id.clone(),
                changes: Vec::new(),
                active: Some(false),
            },
            Operation::DeleteUser { scim_id, .. } => Job::DeleteUser {
                id: scim_id.clone(),
            },
            Operation::CreateGroup { key, display_name } => Job::CreateGroup {
                name: display_name.clone(),
                external_id: key.to_string(),
                lookup_first: was_started(),
            },
            Operation::UpdateGroup {
                scim_id,
                display_name,
                ..
            } => Job::RenameGroup {
                id: scim_id.clone(),
                name: display_name.clone(),
            },
            Operation::AddMembers { key, members, .. }
            | Operation::RemoveMembers { key, members, .. } => {
                let add = matches!(op, Operation::AddMembers { .. });
                let Some(group) = self.live_group(key) else {
                    return Job::Skip(format!(
                        "group {key} does not exist in the target (its creation failed)"
                    ));
                };
                let mut ids = Vec::with_capacity(members.len());
                let mut keys = Vec::with_capacity(members.len());
                for m in members {
                    if let Some(u) = self.live_user(m) {
                        ids.push(u.scim_id.clone());
                        keys.push(m.clone());
                    }
                }
                let unresolved = members.len() - ids.len();
                if ids.is_empty() {
                    return Job::Skip(format!(
                        "none of the {} members exists in the target yet",
                        members.len()
                    ));
                }
                Job::Members {
                    group: group.scim_id.clone(),
                    add,
                    ids,
                    keys,
                    unresolved,
                }
            }
            Operation::DeleteGroup { scim_id, .. } => Job::DeleteGroup {
                id: scim_id.clone(),
            },
        }
    }

    fn commit(
        &mut self,
        run: RunId,
        seq: usize,
        op: &Operation,
        job: Job,
        done: Done,
        outcome: &mut Outcome,
    ) -> Result<(), ApplyError> {
        let mut record = OpRecord {
            seq: seq as i64,
            op: op.name(),
            subject: op.subject().to_string(),
            outcome: "applied",
            http_status: None,
            error: None,
        };
        let change = match done {
            Done::Failed(err) => {
                if err.is_auth() && outcome.stopped.is_none() {
                    outcome.stopped = Some(Stop::Unauthorized(err.to_string()));
                }
                tracing::warn!(op = op.name(), subject = ?op.subject(), error = %err, "operation failed");
                record.outcome = "failed";
                record.http_status = err.status();
                record.error = Some(err.to_string());
                outcome.failed += 1;
                outcome.failures.push(FailedOp {
                    op: op.name(),
                    subject: display_subject(op),
                    http_status: err.status(),
                    error: err.to_string(),
                });
                None
            }
            Done::Skipped(why) => {
                record.outcome = "skipped";
                record.error = Some(why);
                outcome.skipped += 1;
                None
            }
            other => {
                let change = self.state_change(op, &job, other, &mut record);
                if record.outcome == "failed" {
                    outcome.failed += 1;
                    outcome.failures.push(FailedOp {
                        op: op.name(),
                        subject: display_subject(op),
                        http_status: record.http_status,
                        error: record.error.clone().unwrap_or_default(),
                    });
                } else {
                    outcome.applied += 1;
                }
                change
            }
        };
        self.db.commit(run, &record, change.as_ref())?;
        if let Some(change) = change {
            apply_to_state(&mut self.state, change);
        }
        Ok(())
    }

    /// The state change a successful (or "already gone") operation makes.
    fn state_change(
        &self,
        op: &Operation,
        job: &Job,
        done: Done,
        record: &mut OpRecord,
    ) -> Option<StateChange> {
        match (op, done) {
            (Operation::AdoptUser { .. } | Operation::AdoptGroup { .. }, _) => None,
            (
                Operation::CreateUser { key, user_name, .. },
                Done::Created {
                    id,
                    ownership,
                    attrs,
                },
            ) => Some(StateChange::PutUser {
                key: key.clone(),
                user: StateUser {
                    scim_id: id,
                    user_name: user_name.as_str().into(),
                    hash: AttrHash::of(&attrs, &self.create_only),
                    status: Status::Active,
                    ownership,
                    attrs: Some(attrs),
                },
            }),
            (
                Operation::UpdateUser { key, changes, .. }
                | Operation::EnableUser { key, changes, .. },
                Done::Ok,
            ) => {
                let current = self.state.users.get(key)?;
                let mut attrs = current.attrs.clone().unwrap_or_default();
                for (attr, c) in changes {
                    match &c.new {
                        Some(v) => attrs.insert(*attr, v.clone()),
                        None => attrs.remove(attr),
                    };
                }
                let status = if matches!(op, Operation::EnableUser { .. }) {
                    Status::Active
                } else {
                    current.status
                };
                Some(StateChange::PutUser {
                    key: key.clone(),
                    user: StateUser {
                        scim_id: current.scim_id.clone(),
                        user_name: attrs
                            .get(&UserAttr::UserName)
                            .map(|n| n.as_str().into())
                            .unwrap_or_else(|| current.user_name.clone()),
                        hash: AttrHash::of(&attrs, &self.create_only),
                        status,
                        ownership: current.ownership,
                        attrs: Some(attrs),
                    },
                })
            }
            (
                Operation::UpdateUser { key, .. }
                | Operation::EnableUser { key, .. }
                | Operation::DisableUser { key, .. },
                Done::Gone,
            ) => {
                record.outcome = "failed";
                record.http_status = Some(404);
                record.error = Some(
                    "the user no longer exists in the target (deleted by hand?); it will be created again next cycle"
                        .into(),
                );
                Some(StateChange::UserStatus {
                    key: key.clone(),
                    status: Status::Removed,
                })
            }
            (Operation::DisableUser { key, .. }, Done::Ok) => Some(StateChange::UserStatus {
                key: key.clone(),
                status: Status::Disabled,
            }),
            (Operation::DeleteUser { key, .. }, Done::Ok | Done::Gone) => {
                Some(StateChange::UserStatus {
                    key: key.clone(),
                    status: Status::Removed,
                })
            }
            (
                Operation::CreateGroup { key, display_name },
                Done::GroupCreated { id, ownership },
            ) => Some(StateChange::PutGroup {
                key: key.clone(),
                group: StateGroup {
                    scim_id: id,
                    display_name: display_name.clone(),
                    status: Status::Active,
                    ownership,
                },
            }),
            (
                Operation::UpdateGroup {
                    key, display_name, ..
                },
                Done::Ok,
            ) => {
                let current = self.state.groups.get(key)?;
                Some(StateChange::PutGroup {
                    key: key.clone(),
                    group: StateGroup {
                        display_name: display_name.clone(),
                        ..current.clone()
                    },
                })
            }
            (
                Operation::AddMembers { key, .. } | Operation::RemoveMembers { key, .. },
                Done::Ok,
            ) => {
                let Job::Members {
                    add,
                    keys,
                    unresolved,
                    ..
                } = job
                else {
                    return None;
                };
                if *unresolved > 0 {
                    record.error = Some(format!(
                        "{unresolved} member(s) not yet in the target were left for the next cycle"
                    ));
                }
                Some(if *add {
                    StateChange::MembersAdded {
                        group: key.clone(),
                        users: keys.clone(),
                    }
                } else {
                    StateChange::MembersRemoved {
                        group: key.clone(),
                        users: keys.clone(),
                    }
                })
            }
            (
                Operation::UpdateGroup { key, .. }
                | Operation::AddMembers { key, .. }
                | Operation::RemoveMembers { key, .. },
                Done::Gone,
            ) => {
                record.outcome = "failed";
                record.http_status = Some(404);
                record.error = Some(
                    "the group no longer exists in the target; it will be created again next cycle"
                        .into(),
                );
                Some(StateChange::GroupStatus {
                    key: key.clone(),
                    status: Status::Removed,
                })
            }
            (Operation::DeleteGroup { key, scim_id, .. }, Done::Ok | Done::Gone) => {
                // After a recreate, the key already names the new group: only the
                // old id is gone.
                let current = self.state.groups.get(key)?;
                (current.scim_id == *scim_id).then(|| StateChange::GroupStatus {
                    key: key.clone(),
                    status: Status::Removed,
                })
            }
            (_, _) => {
                record.outcome = "failed";
                record.error = Some("unexpected response for this operation".into());
                None
            }
        }
    }
}

fn display_subject(op: &Operation) -> String {
    match op {
        Operation::AdoptUser { user_name, .. }
        | Operation::CreateUser { user_name, .. }
        | Operation::UpdateUser { user_name, .. }
        | Operation::EnableUser { user_name, .. }
        | Operation::DisableUser { user_name, .. }
        | Operation::DeleteUser { user_name, .. } => user_name.clone(),
        Operation::AdoptGroup { display_name, .. }
        | Operation::CreateGroup { display_name, .. }
        | Operation::UpdateGroup { display_name, .. }
        | Operation::DeleteGroup { display_name, .. }
        | Operation::AddMembers { display_name, .. }
        | Operation::RemoveMembers { display_name, .. } => display_name.clone(),
    }
}

fn new_values(changes: &Changes) -> UserAttrs {
    changes
        .iter()
        .filter_map(|(a, c)| c.new.clone().map(|v| (*a, v)))
        .collect()
}

fn patch_list(changes: &Changes) -> Vec<(UserAttr, Option<String>)> {
    changes.iter().map(|(a, c)| (*a, c.new.clone())).collect()
}

/// Mirrors a committed change in the in-memory state, so later phases resolve
/// the ids of objects created earlier in the run.
fn apply_to_state(state: &mut State, change: StateChange) {
    match change {
        StateChange::PutUser { key, user } => {
            state.users.insert(key, user);
        }
        StateChange::UserStatus { key, status } => {
            if let Some(u) = state.users.get_mut(&key) {
                u.status = status;
            }
            if status == Status::Removed {
                for members in state.memberships.values_mut() {
                    members.remove(&key);
                }
            }
        }
        StateChange::PutGroup { key, group } => {
            if state
                .groups
                .get(&key)
                .is_some_and(|g| g.scim_id != group.scim_id)
            {
                state.memberships.remove(&key);
            }
            state.groups.insert(key, group);
        }
        StateChange::GroupStatus { key, status } => {
            if let Some(g) = state.groups.get_mut(&key) {
                g.status = status;
            }
            if status == Status::Removed {
                state.memberships.remove(&key);
            }
        }
        StateChange::MembersAdded { group, users } => {
            state.memberships.entry(group).or_default().extend(users);
        }
        StateChange::MembersRemoved { group, users } => {
            if let Some(m) = state.memberships.get_mut(&group) {
                for u in &users {
                    m.remove(u);
                }
            }
        }
    }
}

/// Sends one operation's requests.
async fn execute(client: &ScimClient, job: &Job) -> Done {
    let result = match job {
        Job::None => return Done::Ok,
        Job::Skip(why) => return Done::Skipped(why.clone()),
        Job::CreateUser {
            attrs,
            lookup_first,
        } => return create_user(client, attrs, *lookup_first).await,
        Job::CreateGroup {
            name,
            external_id,
            lookup_first,
        } => return create_group(client, name, external_id, *lookup_first).await,
        Job::PatchUser {
            id,
            changes,
            active,
        } => client.patch_user(id, changes, *active).await,
        Job::DeleteUser { id } => client.delete_user(id).await,
        Job::RenameGroup { id, name } => client.rename_group(id, name).await,
        Job::Members {
            group, add, ids, ..
        } => {
            if *add {
                client.add_members(group, ids).await
            } else {
                client.remove_members(group, ids).await
            }
        }
        Job::DeleteGroup { id } => client.delete_group(id).await,
    };
    match result {
        Ok(()) => Done::Ok,
        Err(ScimError::NotFound) => Done::Gone,
        Err(e) => Done::Failed(e),
    }
}

/// Creates a user; on a conflict (the user exists, perhaps from a create that
/// timed out but succeeded) finds it by `userName`, brings it in line and adopts it.
async fn create_user(client: &ScimClient, attrs: &UserAttrs, lookup_first: bool) -> Done {
    let user_name = attrs.get(&UserAttr::UserName).cloned().unwrap_or_default();
    if !lookup_first {
        match client.create_user(attrs, true).await {
            Ok(remote) => {
                return Done::Created {
                    id: remote.id,
                    ownership: Ownership::Created,
                    attrs: attrs.clone(),
                };
            }
            Err(ScimError::Conflict { .. }) => {}
            Err(e) => return Done::Failed(e),
        }
    }
    let existing = match client.find_user_by_user_name(&user_name).await {
        Ok(found) => found,
        Err(e) => return Done::Failed(e),
    };
    let Some(remote) = existing else {
        if lookup_first {
            // The interrupted create never reached the target: create it now.
            return Box::pin(create_user(client, attrs, false)).await;
        }
        return Done::Failed(ScimError::Conflict {
            detail: format!(
                "the target reports a conflict for userName {user_name:?} but no user with that name can be found"
            ),
        });
    };
    let changes: Vec<(UserAttr, Option<String>)> = attrs
        .iter()
        .filter(|(a, v)| remote.attrs.get(a) != Some(v))
        .map(|(a, v)| (*a, Some(v.clone())))
        .collect();
    if (!changes.is_empty() || !remote.active)
        && let Err(e) = client
            .patch_user(&remote.id, &changes, (!remote.active).then_some(true))
            .await
    {
        return Done::Failed(e);
    }
    Done::Created {
        id: remote.id,
        ownership: if lookup_first {
            Ownership::Created
        } else {
            Ownership::Adopted
        },
        attrs: attrs.clone(),
    }
}

async fn create_group(
    client: &ScimClient,
    name: &str,
    external_id: &str,
    lookup_first: bool,
) -> Done {
    if lookup_first {
        match client.find_group_by_display_name(name).await {
            Ok(Some(g)) => {
                return Done::GroupCreated {
                    id: g.id,
                    ownership: Ownership::Created,
                };
            }
            Ok(None) => {}
            Err(e) => return Done::Failed(e),
        }
    }
    match client.create_group(name, Some(external_id)).await {
        Ok(g) => Done::GroupCreated {
            id: g.id,
            ownership: Ownership::Created,
        },
        Err(ScimError::Conflict { detail }) => {
            match client.find_group_by_display_name(name).await {
                Ok(Some(g)) => Done::GroupCreated {
                    id: g.id,
                    ownership: Ownership::Adopted,
                },
                Ok(None) => Done::Failed(ScimError::Conflict { detail }),
                Err(e) => Done::Failed(e),
            }
        }
        Err(e) => Done::Failed(e),
    }
}
