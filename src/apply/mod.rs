//! The executor: applies a checked plan to a [`Target`] in dependency order
//! (adopt → create users → update users → create groups → rename groups → add
//! members → remove members → disable/delete users → delete groups), with bounded
//! concurrency, and commits each operation's outcome to the state DB as it
//! completes ([`transition`] says what it changes). One failing object is
//! recorded with its reason and the run goes on; a refused token stops it at
//! once, and so does a target where most calls fail. A stop request lets the
//! operations in flight finish and commit, then stops.

mod resume;
mod target;
#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
mod tests;
mod transition;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use futures_util::stream;
use serde::Serialize;

use crate::model::{
    GroupKey, GroupName, Ownership, ScimId, SourceKey, State, UserAttr, UserAttrs, UserName,
};
use crate::plan::{Changes, Operation, Phase, Plan};
use crate::state::{OpOutcome, OpRecord, RunId, StateDb, StateError};

pub use resume::Interrupted;
pub use target::{Target, TargetError};
pub use transition::{Response, Transition, assume_success, members_present, transition};

/// Stop early when at least this many operations ran and more than half failed
/// because of the target (5xx, time-outs, exhausted retries): the target is
/// broken, and hammering it helps nobody. Objects the target refuses (a 400 for
/// one attribute, say) do not count: they must not starve the removals that
/// come last.
const FAILURE_BUDGET_MIN_OPS: u64 = 20;

/// Creates in flight per concurrency slot between two journal marks: large
/// enough to keep the pipeline full, small enough that a crash costs few
/// lookups on resume.
const CREATE_WINDOW_PER_SLOT: usize = 16;

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

/// One failed operation, for the run summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailedOp {
    pub op: &'static str,
    pub subject: String,
    pub http_status: Option<u16>,
    pub error: String,
}

/// What applying a plan did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub applied: u64,
    pub failed: u64,
    /// Of `failed`, the failures of the target itself ([`TargetError::is_transient`]):
    /// what the failure budget weighs.
    pub target_failed: u64,
    pub skipped: u64,
    pub failures: Vec<FailedOp>,
    pub stopped: Option<Stop>,
}

/// Where the executor reports its progress (a terminal progress bar, or
/// nothing).
pub trait Progress {
    fn start(&self, _total: u64) {}
    fn advance(&self) {}
    fn finish(&self) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}

/// The requests one operation needs, resolved before its phase starts, so the
/// request futures own their inputs while the commit loop owns the state.
enum Job {
    /// Nothing to send (an adoption: the target already holds the object).
    Record,
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
        name: GroupName,
        external_id: String,
        members: Vec<ScimId>,
        lookup_first: bool,
    },
    RenameGroup {
        id: ScimId,
        name: GroupName,
    },
    Members {
        group: ScimId,
        add: bool,
        ids: Vec<ScimId>,
    },
    DeleteGroup {
        id: ScimId,
    },
    Skip(String),
}

/// Applies plans to one target, committing to one state DB.
pub struct Executor<'a, T: Target> {
    pub target: T,
    pub db: &'a mut StateDb,
    /// The state the plan was made against (as loaded from `db`).
    pub state: State,
    /// Attributes written only on create (left out of hashes).
    pub create_only: BTreeSet<UserAttr>,
    pub concurrency: usize,
    /// Set by the caller (a signal) to stop after the operations in flight.
    pub shutdown: Arc<AtomicBool>,
    pub progress: &'a dyn Progress,
}

impl<T: Target> Executor<'_, T> {
    /// Applies `plan` (already checked by the guards) as run `command`.
    pub async fn run(mut self, command: &str, plan: &Plan) -> Result<(Outcome, RunId), StateError> {
        let ops = &plan.operations;
        let interrupted = Interrupted::from_journal(self.db.interrupted_ops()?);
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
        let first_members = first_members(ops);

        let mut outcome = Outcome::default();
        let mut observed_pending = !plan.observed.is_empty();
        self.progress.start(ops.len() as u64);
        let mut seq = 0usize;
        while seq < ops.len() && outcome.stopped.is_none() {
            let phase = ops[seq].phase();
            if phase > Phase::Adopt && observed_pending {
                self.commit_observed(plan)?;
                observed_pending = false;
            }
            let mut end = ops[seq..]
                .iter()
                .position(|op| op.phase() != phase)
                .map_or(ops.len(), |n| seq + n);
            if matches!(phase, Phase::CreateUsers | Phase::CreateGroups) {
                // Creates run in windows, each marked started just before it is
                // sent: after a crash only one window is looked up again.
                end = end.min(seq + self.concurrency.max(1) * CREATE_WINDOW_PER_SLOT);
            }
            let ctx = PhaseContext {
                interrupted: &interrupted,
                first_members: &first_members,
            };
            self.run_phase(run, seq, &ops[seq..end], phase, &ctx, &mut outcome)
                .await?;
            seq = end;
        }
        if observed_pending && outcome.stopped.is_none() {
            self.commit_observed(plan)?;
        }
        outcome.skipped +=
            (ops.len() as u64).saturating_sub(outcome.applied + outcome.failed + outcome.skipped);
        self.progress.finish();
        Ok((outcome, run))
    }

    /// `--full`: what the target showed, committed after the adoptions (so the
    /// memberships of adopted groups stay) and before anything is changed.
    fn commit_observed(&mut self, plan: &Plan) -> Result<(), StateError> {
        self.db.commit_changes(&plan.observed)?;
        for change in &plan.observed {
            self.state.apply(change);
        }
        Ok(())
    }

    async fn run_phase(
        &mut self,
        run: RunId,
        first_seq: usize,
        ops: &[Operation],
        phase: Phase,
        ctx: &PhaseContext<'_>,
        outcome: &mut Outcome,
    ) -> Result<(), StateError> {
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
            .map(|(i, op)| (first_seq + i, self.prepare(op, ctx)))
            .collect();
        let target = self.target.clone();
        let shutdown = self.shutdown.clone();
        // Set once the run must stop: no new request starts. Separate from
        // `shutdown`, which belongs to the caller (a daemon reads it to decide
        // whether to exit, so a failed cycle must not set it).
        let halt = Arc::new(AtomicBool::new(false));
        let mut results = stream::iter(jobs)
            .map(|(seq, job)| {
                let target = target.clone();
                let shutdown = shutdown.clone();
                let halt = halt.clone();
                async move {
                    if shutdown.load(Ordering::SeqCst) || halt.load(Ordering::SeqCst) {
                        return (seq, Response::Skipped("interrupted".into()));
                    }
                    (seq, execute(&target, job).await)
                }
            })
            .buffer_unordered(self.concurrency.max(1));

        while let Some((seq, response)) = results.next().await {
            let op = &ops[seq - first_seq];
            self.commit(run, seq, op, response, outcome)?;
            self.progress.advance();
            if outcome.stopped.is_none() {
                if self.shutdown.load(Ordering::SeqCst) {
                    outcome.stopped = Some(Stop::Signal);
                } else {
                    let done = outcome.applied + outcome.failed;
                    if done >= FAILURE_BUDGET_MIN_OPS && outcome.target_failed * 2 > done {
                        outcome.stopped = Some(Stop::FailureBudget {
                            failed: outcome.target_failed,
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

    fn prepare(&self, op: &Operation, ctx: &PhaseContext<'_>) -> Job {
        let interrupted = ctx.interrupted;
        match op {
            Operation::AdoptUser { .. } | Operation::AdoptGroup { .. } => Job::Record,
            Operation::CreateUser { changes, .. } => Job::CreateUser {
                attrs: new_values(changes),
                lookup_first: interrupted.contains(op),
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
                // The members the plan adds next, for targets that want them
                // in the POST (members required in their schema).
                members: ctx
                    .first_members
                    .get(key)
                    .into_iter()
                    .flatten()
                    .filter_map(|m| self.state.live_user(m).map(|u| u.scim_id.clone()))
                    .collect(),
                lookup_first: interrupted.contains(op),
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
                let Some(group) = self.state.live_group(key) else {
                    return Job::Skip(format!(
                        "group {key} does not exist in the target (its creation failed)"
                    ));
                };
                let ids: Vec<ScimId> = members_present(&self.state, members)
                    .into_iter()
                    .filter_map(|m| self.state.live_user(m).map(|u| u.scim_id.clone()))
                    .collect();
                if ids.is_empty() {
                    return Job::Skip(format!(
                        "none of the {} members exists in the target yet",
                        members.len()
                    ));
                }
                Job::Members {
                    group: group.scim_id.clone(),
                    add: matches!(op, Operation::AddMembers { .. }),
                    ids,
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
        response: Response,
        outcome: &mut Outcome,
    ) -> Result<(), StateError> {
        if let Response::Failed(err) = &response {
            if err.is_auth() && outcome.stopped.is_none() {
                outcome.stopped = Some(Stop::Unauthorized(err.to_string()));
            }
            if err.is_transient() {
                outcome.target_failed += 1;
            }
            // Quoted and escaped: the error quotes what the target said.
            tracing::warn!(op = op.name(), subject = ?op.subject(), error = ?err.to_string(), "operation failed");
        }
        let t = transition(&self.state, op, response, &self.create_only);
        let record = OpRecord {
            seq: seq as i64,
            op: op.name(),
            subject: op.subject().to_string(),
            outcome: t.outcome,
            http_status: t.http_status,
            error: t.error.clone(),
        };
        self.db.commit(run, &record, t.change.as_ref())?;
        if let Some(change) = &t.change {
            self.state.apply(change);
        }
        match t.outcome {
            OpOutcome::Applied => outcome.applied += 1,
            OpOutcome::Skipped => outcome.skipped += 1,
            OpOutcome::Failed => {
                outcome.failed += 1;
                outcome.failures.push(FailedOp {
                    op: op.name(),
                    subject: op.display_subject().to_string(),
                    http_status: t.http_status,
                    error: t.error.unwrap_or_default(),
                });
            }
        }
        Ok(())
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

/// What every operation of a phase is prepared with.
struct PhaseContext<'a> {
    interrupted: &'a Interrupted,
    first_members: &'a HashMap<GroupKey, Vec<SourceKey>>,
}

/// The members the plan adds to each group it creates.
fn first_members(ops: &[Operation]) -> HashMap<GroupKey, Vec<SourceKey>> {
    let created: BTreeSet<&GroupKey> = ops
        .iter()
        .filter_map(|op| match op {
            Operation::CreateGroup { key, .. } => Some(key),
            _ => None,
        })
        .collect();
    let mut out: HashMap<GroupKey, Vec<SourceKey>> = HashMap::new();
    for op in ops {
        if let Operation::AddMembers { key, members, .. } = op
            && created.contains(key)
        {
            out.entry(key.clone())
                .or_default()
                .extend(members.iter().cloned());
        }
    }
    out
}

/// Sends one operation's requests.
async fn execute<T: Target>(target: &T, job: Job) -> Response {
    let result = match job {
        Job::Record => return Response::Ok,
        Job::Skip(why) => return Response::Skipped(why),
        Job::CreateUser {
            attrs,
            lookup_first,
        } => return create_user(target, attrs, lookup_first).await,
        Job::CreateGroup {
            name,
            external_id,
            members,
            lookup_first,
        } => return create_group(target, &name, &external_id, &members, lookup_first).await,
        Job::PatchUser {
            id,
            changes,
            active,
        } => target.patch_user(&id, &changes, active).await,
        Job::DeleteUser { id } => target.delete_user(&id).await,
        Job::RenameGroup { id, name } => target.rename_group(&id, &name).await,
        Job::Members { group, add, ids } => {
            if add {
                target.add_members(&group, &ids).await
            } else {
                target.remove_members(&group, &ids).await
            }
        }
        Job::DeleteGroup { id } => target.delete_group(&id).await,
    };
    match result {
        Ok(()) => Response::Ok,
        Err(TargetError::NotFound) => Response::Gone,
        Err(e) => Response::Failed(e),
    }
}

/// Creates a user; on a conflict (the user exists, perhaps from a create that
/// timed out but succeeded) finds it by `userName`, brings it in line and adopts
/// it. `lookup_first`: an interrupted run may have created it already.
async fn create_user<T: Target>(target: &T, attrs: UserAttrs, lookup_first: bool) -> Response {
    let user_name = UserName::new(
        attrs
            .get(&UserAttr::UserName)
            .map(String::as_str)
            .unwrap_or_default(),
    );
    if !lookup_first {
        match target.create_user(&attrs).await {
            Ok(id) => {
                return Response::UserCreated {
                    id,
                    ownership: Ownership::Created,
                    attrs,
                };
            }
            Err(TargetError::Conflict { .. }) => {}
            Err(e) => return Response::Failed(e),
        }
    }
    let existing = match target.find_user(&user_name).await {
        Ok(found) => found,
        Err(e) => return Response::Failed(e),
    };
    let Some(remote) = existing else {
        if lookup_first {
            // The interrupted create never reached the target: create it now.
            return Box::pin(create_user(target, attrs, false)).await;
        }
        return Response::Failed(TargetError::Conflict {
            detail: format!(
                "the target reports a conflict for userName {:?} but no user with that name can be found",
                user_name.as_str()
            ),
        });
    };
    // Compared as the target holds values: a value differing only in case on
    // an attribute it does not compare exactly is the same value (and changing
    // it may be refused, as for an immutable userName).
    let rules = target.rules();
    let changes: Vec<(UserAttr, Option<String>)> = attrs
        .iter()
        .filter(|(a, v)| !rules.unheld.contains(a) && !rules.holds(**a, remote.attrs.get(a), v))
        .map(|(a, v)| (*a, Some(v.clone())))
        .collect();
    if (!changes.is_empty() || !remote.active)
        && let Err(e) = target
            .patch_user(&remote.id, &changes, (!remote.active).then_some(true))
            .await
    {
        return Response::Failed(e);
    }
    Response::UserCreated {
        id: remote.id,
        ownership: if lookup_first {
            Ownership::Created
        } else {
            Ownership::Adopted
        },
        attrs,
    }
}

async fn create_group<T: Target>(
    target: &T,
    name: &GroupName,
    external_id: &str,
    members: &[ScimId],
    lookup_first: bool,
) -> Response {
    // Looked up first every time: many servers (scim2-server among them) do not
    // refuse a second group with the same name, so a group made by hand, or by a
    // run whose state was lost, would otherwise be duplicated. A group found
    // here is adopted — unless an interrupted run of ours had just created it.
    match target.find_group(name).await {
        Ok(Some(g)) => {
            return Response::GroupCreated {
                id: g.id,
                ownership: if lookup_first {
                    Ownership::Created
                } else {
                    Ownership::Adopted
                },
            };
        }
        Ok(None) => {}
        Err(e) => return Response::Failed(e),
    }
    match target.create_group(name, external_id, members).await {
        Ok(id) => Response::GroupCreated {
            id,
            ownership: Ownership::Created,
        },
        Err(TargetError::Conflict { detail }) => match target.find_group(name).await {
            Ok(Some(g)) => Response::GroupCreated {
                id: g.id,
                ownership: Ownership::Adopted,
            },
            Ok(None) => Response::Failed(TargetError::Conflict { detail }),
            Err(e) => Response::Failed(e),
        },
        Err(e) => Response::Failed(e),
    }
}
