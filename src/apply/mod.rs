//! The executor: applies a checked plan to a [`Target`] in dependency order
//! (adopt → release userNames that others take → create users → update users →
//! create groups → rename groups → add members → remove members → disable/delete
//! users → delete groups), with bounded concurrency — inside a phase, an
//! operation that takes a userName waits for the one that frees it — and
//! commits each operation's outcome to the state DB as it completes
//! ([`transition`] says what it changes). One failing object is
//! recorded with its reason and the run goes on; a refused token stops it at
//! once, and so does a target where most calls fail. A stop request lets the
//! operations in flight finish and commit, then stops.

mod kept;
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

use serde::Serialize;
use tokio::task::JoinSet;

use crate::model::{
    GroupKey, GroupName, MemberRef, OpKind, Ownership, RemoteUser, ScimId, SourceKey, State,
    Status, UserAttr, UserAttrs, UserName,
};
use crate::plan::{Changes, NameStep, Operation, Phase, Plan, claimed_name, released_name};
use crate::state::{OpOutcome, OpRecord, RunId, StateDb, StateError};
use kept::{Evidence, Kept};

pub use resume::Interrupted;
pub use target::{RequiredPaths, Target, TargetError};
pub use transition::{Response, Transition, assume_success, members_present, transition};

/// Stop early when at least this many operations ran and more than half failed
/// because of the target (5xx, time-outs, exhausted retries): the target is
/// broken, and hammering it helps nobody. Objects the target refuses (a 400 for
/// one attribute, say) do not count: they must not starve the removals that
/// come last.
const FAILURE_BUDGET_MIN_OPS: u64 = 20;

/// Operations marked started at a time (one journal write), per concurrency
/// slot: few writes, and a crash costs few lookups on resume.
const START_WINDOW_PER_SLOT: usize = 16;
/// The most operations marked started at a time, whatever the concurrency:
/// a run killed at 32 in flight leaves at most this many creates (and those
/// in flight) to look up on resume, not 32 × 16.
const START_WINDOW_MAX: usize = 128;

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
    pub op: OpKind,
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
    /// Of `skipped`, the operations not sent because their action is
    /// switched off (`policy.actions`).
    pub action_off: u64,
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
    /// `reuse_accounts: after_removal`: the leaver's account, re-enabled with
    /// the new user's attributes.
    TakeOver {
        id: ScimId,
        attrs: UserAttrs,
        ownership: Ownership,
    },
    /// Not sent: the planner or the state refuses it, and why.
    Refuse(String),
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
        members: Vec<MemberRef>,
        lookup_first: bool,
    },
    RenameGroup {
        id: ScimId,
        name: GroupName,
    },
    Members {
        group: ScimId,
        add: bool,
        members: Vec<MemberRef>,
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
    pub async fn run(
        &mut self,
        command: &str,
        plan: &Plan,
    ) -> Result<(Outcome, RunId), StateError> {
        let ops = &plan.operations;
        let interrupted = Interrupted::from_journal(self.db.interrupted_ops()?);
        if !interrupted.is_empty() {
            tracing::warn!(
                operations = interrupted.len(),
                "a previous run was interrupted; creates it had started are looked up before being sent again"
            );
        }
        let journal: Vec<(&'static str, String, Option<String>)> = ops
            .iter()
            .map(|op| (op.name(), op.subject().to_string(), created_name(op)))
            .collect();
        let run = self.db.begin_run_named(command, &journal)?;
        let action_off = self.record_action_off(run, plan)?;
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
            // A userName taken from another user waits until that one let it go.
            end = seq + names_free_until(&ops[seq..end]);
            let ctx = PhaseContext {
                interrupted: &interrupted,
                first_members: &first_members,
            };
            self.run_phase(run, seq, &ops[seq..end], &ctx, &mut outcome)
                .await?;
            seq = end;
        }
        if observed_pending && outcome.stopped.is_none() {
            self.commit_observed(plan)?;
        }
        outcome.skipped +=
            (ops.len() as u64).saturating_sub(outcome.applied + outcome.failed + outcome.skipped);
        outcome.skipped += action_off;
        outcome.action_off = action_off;
        self.progress.finish();
        Ok((outcome, run))
    }

    /// The plan's operations whose action is switched off, in the run's log
    /// as skipped with the reason, numbered after the operations it sends.
    /// Returns how many.
    fn record_action_off(&mut self, run: RunId, plan: &Plan) -> Result<u64, StateError> {
        let first = plan.operations.len();
        let records: Vec<OpRecord> = plan
            .skipped
            .iter()
            .enumerate()
            .map(|(i, skipped)| OpRecord {
                seq: (first + i) as i64,
                op: skipped.op.kind(),
                subject: skipped.op.subject().to_string(),
                outcome: OpOutcome::Skipped,
                http_status: None,
                error: Some(skipped.reason()),
                old_values: None,
                new_values: serde_json::to_string(&skipped.op).ok(),
            })
            .collect();
        self.db.record_unsent(run, &records)?;
        if !records.is_empty() {
            tracing::info!(
                operations = records.len(),
                actions_off = ?plan.skipped.iter().map(|s| s.action_off.name()).collect::<BTreeSet<_>>(),
                "operations not sent: their action is switched off (policy.actions)"
            );
        }
        Ok(records.len() as u64)
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
        ctx: &PhaseContext<'_>,
        outcome: &mut Outcome,
    ) -> Result<(), StateError> {
        // Operations are marked started in windows, each just before its
        // first request leaves: after a crash, a started create is looked up
        // before being created again, so nothing is duplicated, and only
        // about one window is looked up; any other started operation may have
        // changed the target unrecorded, so the next cycle reads the target
        // before planning (see `sync::resume_options`). The window slides: the
        // next one is marked when the first of its operations is queued,
        // while the previous one's requests are still in flight, so the slots
        // never wait for each other (and a new window does not send
        // `concurrency` requests at the same instant). Under `concurrency:
        // auto` a window is sized by the limit in force when it is marked.
        let end_seq = first_seq + ops.len();
        let mut marked_until = first_seq;
        let slots = self.concurrency.max(1);
        // Set once the run must stop: no new request starts. Separate from
        // `shutdown`, which belongs to the caller (a daemon reads it to decide
        // whether to exit, so a failed cycle must not set it).
        let halt = Arc::new(AtomicBool::new(false));
        // `slots` tasks send the requests, on the runtime's workers; this loop
        // prepares operations into a queue of `slots` and commits what comes
        // back. A slot whose request is answered takes the next prepared
        // operation at once: it does not wait for this loop to commit the
        // answer (nor do the slots start together after a busy moment).
        // Answered but not yet committed are at most two per slot, as before
        // a crash: each is done again or looked up on resume. Dropped (a
        // stop, a crash in the tests), the set aborts what is in flight.
        let (queue, queued) = tokio::sync::mpsc::channel::<(usize, Job)>(slots);
        let queued = Arc::new(tokio::sync::Mutex::new(queued));
        let (answer, mut answers) = tokio::sync::mpsc::unbounded_channel();
        let mut workers = JoinSet::new();
        for _ in 0..slots {
            let target = self.target.clone();
            let shutdown = self.shutdown.clone();
            let halt = halt.clone();
            let queued = queued.clone();
            let answer = answer.clone();
            workers.spawn(async move {
                loop {
                    let Some((seq, job)) = queued.lock().await.recv().await else {
                        return;
                    };
                    let (response, notes) =
                        if shutdown.load(Ordering::SeqCst) || halt.load(Ordering::SeqCst) {
                            (Response::Skipped("interrupted".into()), Evidence::default())
                        } else {
                            execute(&target, job).await
                        };
                    // A refused token stops the run at once: the slots do not
                    // wait for the loop to commit this answer to know it.
                    if matches!(&response, Response::Failed(e) if e.is_auth()) {
                        halt.store(true, Ordering::SeqCst);
                    }
                    if answer.send((seq, response, notes)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(answer);
        let mut next = first_seq;
        // Queued or in flight, not yet committed.
        let mut pending = 0usize;
        let mut warned = BTreeSet::new();
        loop {
            // Each operation is prepared as it is queued, against the state
            // as the operations committed so far left it.
            while next < end_seq {
                if next >= marked_until {
                    if halt.load(Ordering::SeqCst) {
                        // Stopping: the window marked is closed (its operations
                        // committed as interrupted); no new one starts.
                        break;
                    }
                    let count = self.window().min(end_seq - next);
                    self.db.mark_started_from(run, next as i64, count as i64)?;
                    marked_until = next + count;
                }
                let Ok(permit) = queue.try_reserve() else {
                    break;
                };
                permit.send((next, self.prepare(&ops[next - first_seq], ctx)));
                next += 1;
                pending += 1;
            }
            if pending == 0 {
                break;
            }
            let (seq, response, notes) = tokio::select! {
                received = answers.recv() => received.expect("the slots answer every queued operation"),
                Some(Err(e)) = workers.join_next() => std::panic::resume_unwind(e.into_panic()),
            };
            pending -= 1;
            let op = &ops[seq - first_seq];
            let (response, notes) = match response {
                Response::Existing {
                    remote,
                    attrs,
                    lookup_first,
                } => self.settle_conflict(op, remote, attrs, lookup_first).await,
                other => (other, notes),
            };
            self.note(op, &notes, &mut warned)?;
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

    /// Operations marked started at a time: [`START_WINDOW_PER_SLOT`] per
    /// request the target lets in flight, at most [`START_WINDOW_MAX`].
    fn window(&self) -> usize {
        let slots = self.concurrency.max(1);
        let in_flight = self.target.in_flight_limit().unwrap_or(slots);
        (in_flight.clamp(1, slots) * START_WINDOW_PER_SLOT).min(START_WINDOW_MAX)
    }

    /// A create met an existing account with its userName: adopted only when no
    /// other key's state row records that account (a leaver's account is never
    /// handed to a new key silently).
    async fn settle_conflict(
        &self,
        op: &Operation,
        remote: RemoteUser,
        attrs: UserAttrs,
        lookup_first: bool,
    ) -> (Response, Evidence) {
        let (Some(key), Some(user_name)) = (op.user_key(), op.user_name()) else {
            unreachable!("only a user's create meets a userName conflict");
        };
        if let Some((holder, h)) = self.state.owner_of(&remote.id, key) {
            return (
                Response::Refused(refused(key, user_name, holder, h.status)),
                Evidence::default(),
            );
        }
        adopt_existing(&self.target, remote, attrs, lookup_first).await
    }

    fn prepare(&self, op: &Operation, ctx: &PhaseContext<'_>) -> Job {
        let interrupted = ctx.interrupted;
        match op {
            Operation::AdoptUser { .. } | Operation::AdoptGroup { .. } => Job::Record,
            Operation::CreateUser {
                key,
                user_name,
                attrs,
                name_step,
            } => match name_step {
                Some(NameStep::Refused { holder, status }) => {
                    Job::Refuse(refused(key, user_name, holder, *status))
                }
                Some(NameStep::TakesOver { from, scim_id }) => match self.state.users.get(from) {
                    Some(h) if h.scim_id == *scim_id && h.status == Status::Disabled => {
                        Job::TakeOver {
                            id: scim_id.clone(),
                            attrs: attrs.clone(),
                            ownership: h.ownership,
                        }
                    }
                    _ => Job::Refuse(format!(
                        "user {key} takes over the account of user {from} only once {from}'s removal is done, and it is not (it failed or the state changed); the next cycle tries again"
                    )),
                },
                _ => Job::CreateUser {
                    attrs: attrs.clone(),
                    lookup_first: interrupted.contains(op),
                },
            },
            Operation::UpdateUser {
                key,
                user_name,
                name_step: Some(NameStep::Refused { holder, status }),
                ..
            } => Job::Refuse(rename_refused(key, user_name, holder, *status)),
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
                    .filter_map(|m| {
                        self.state.live_user(m).map(|u| MemberRef {
                            id: u.scim_id.to_scim_id(),
                            user_name: Some(u.user_name.clone()),
                        })
                    })
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
                let mut refs: Vec<MemberRef> = members_present(&self.state, members)
                    .into_iter()
                    .filter_map(|m| self.state.live_user(m))
                    .map(|u| MemberRef {
                        id: u.scim_id.to_scim_id(),
                        user_name: Some(u.user_name.clone()),
                    })
                    .collect();
                if let Operation::RemoveMembers { dangling, .. } = op {
                    // Named exactly as the target stores them; no user has them.
                    refs.extend(dangling.iter().map(|value| MemberRef {
                        id: ScimId::new(value.as_str()),
                        user_name: None,
                    }));
                }
                if refs.is_empty() {
                    return Job::Skip(format!(
                        "none of the {} members exists in the target yet",
                        members.len()
                    ));
                }
                Job::Members {
                    group: group.scim_id.clone(),
                    add: matches!(op, Operation::AddMembers { .. }),
                    members: refs,
                }
            }
            Operation::DeleteGroup { scim_id, .. } => Job::DeleteGroup {
                id: scim_id.clone(),
            },
        }
    }

    /// Records what the target's answer to `op` showed it keeps for that
    /// user. A note new for the user is logged: as a warning the first time
    /// per attribute in this phase, then at debug level.
    fn note(
        &mut self,
        op: &Operation,
        evidence: &Evidence,
        warned: &mut BTreeSet<UserAttr>,
    ) -> Result<(), StateError> {
        let Some(key) = op.user_key().filter(|_| !evidence.is_empty()) else {
            return Ok(());
        };
        let new = self
            .db
            .record_answer(key, &evidence.noted, &evidence.kept)?;
        for note in evidence.noted.iter().filter(|n| new.contains(&n.attr)) {
            if warned.insert(note.attr) {
                tracing::warn!(
                    user = %key,
                    "{note}: not sent again while the source value stays the same; `idsync status` counts such users, `sync --full` re-checks (later users are logged at debug level)"
                );
            } else {
                tracing::debug!(user = %key, "{note}");
            }
        }
        Ok(())
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
        // What a failed or skipped operation destroyed: nothing.
        let old_values = if t.outcome == OpOutcome::Applied {
            self.destroyed_values(op)?
        } else {
            None
        };
        let record = OpRecord {
            seq: seq as i64,
            op: op.kind(),
            subject: op.subject().to_string(),
            outcome: t.outcome,
            http_status: t.http_status,
            error: t.error.clone(),
            old_values,
            // Every outcome: the log shows what a failed one tried to change.
            new_values: serde_json::to_string(op).ok(),
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
                    op: op.kind(),
                    subject: op.display_subject().to_string(),
                    http_status: t.http_status,
                    error: t.error.unwrap_or_default(),
                });
            }
        }
        Ok(())
    }
}

impl<T: Target> Executor<'_, T> {
    /// What a delete destroys that the operation does not carry, as JSON for
    /// the history (`idsync revert` re-creates from it): a user's pushed
    /// attributes and groups, a group's members.
    fn destroyed_values(&self, op: &Operation) -> Result<Option<String>, StateError> {
        let value = match op {
            Operation::DeleteUser { key, .. } => {
                let attrs = match self
                    .state
                    .users
                    .get(key)
                    .and_then(|u| u.attrs.as_deref().cloned())
                {
                    Some(attrs) => Some(attrs),
                    None => self.db.user_attrs(key)?,
                };
                let groups: Vec<&GroupKey> = self
                    .state
                    .memberships
                    .iter()
                    .filter(|(_, members)| members.contains(key))
                    .map(|(g, _)| g)
                    .collect();
                let active = self
                    .state
                    .users
                    .get(key)
                    .is_some_and(|u| u.status == Status::Active);
                serde_json::json!({ "attrs": attrs, "groups": groups, "active": active })
            }
            Operation::DeleteGroup { key, .. } => {
                let members: Vec<&SourceKey> = self
                    .state
                    .memberships
                    .get(key)
                    .map(|m| m.iter().collect())
                    .unwrap_or_default();
                serde_json::json!({ "members": members })
            }
            _ => return Ok(None),
        };
        Ok(Some(value.to_string()))
    }
}

/// The name a create sends, which finds what it made after a crash.
fn created_name(op: &Operation) -> Option<String> {
    match op {
        Operation::CreateUser { user_name, .. } => Some(user_name.to_string()),
        Operation::CreateGroup { display_name, .. } => Some(display_name.to_string()),
        _ => None,
    }
}

/// How many of `ops` (one phase) can run together: up to the first that takes
/// a userName an earlier one of them releases.
fn names_free_until(ops: &[Operation]) -> usize {
    let mut released: Vec<UserName> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if !released.is_empty()
            && let Some(name) = claimed_name(op)
            && released.contains(&name)
        {
            return i.max(1);
        }
        released.extend(released_name(op));
    }
    ops.len()
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

/// Sends one operation's requests; with the attributes the target did not
/// keep as sent (see [`kept`]).
async fn execute<T: Target>(target: &T, job: Job) -> (Response, Evidence) {
    let result = match job {
        Job::Record => return (Response::Ok, Evidence::default()),
        Job::Skip(why) => return (Response::Skipped(why), Evidence::default()),
        Job::Refuse(why) => return (Response::Refused(why), Evidence::default()),
        Job::TakeOver {
            id,
            attrs,
            ownership,
        } => {
            let changes: Vec<(UserAttr, Option<String>)> =
                attrs.iter().map(|(a, v)| (a, Some(v.to_owned()))).collect();
            return match target.patch_user(&id, &changes, Some(true)).await {
                Ok(answer) => {
                    let (attrs, notes) = match answer {
                        Some(stored) => as_stored(target, &id, attrs, &stored).await,
                        None => (attrs, Evidence::default()),
                    };
                    (
                        Response::UserCreated {
                            id,
                            ownership,
                            attrs,
                        },
                        notes,
                    )
                }
                Err(TargetError::NotFound) => (Response::Gone, Evidence::default()),
                Err(e) => (Response::Failed(e), Evidence::default()),
            };
        }
        Job::CreateUser {
            attrs,
            lookup_first,
        } => return create_user(target, attrs, lookup_first).await,
        Job::CreateGroup {
            name,
            external_id,
            members,
            lookup_first,
        } => {
            return (
                create_group(target, &name, &external_id, &members, lookup_first).await,
                Evidence::default(),
            );
        }
        Job::PatchUser {
            id,
            changes,
            active,
        } => {
            return match target.patch_user(&id, &changes, active).await {
                Ok(answer) => {
                    let sent = changes
                        .iter()
                        .filter_map(|(a, v)| v.as_deref().map(|v| (*a, v)));
                    match answer.as_ref().and_then(|a| kept::judge(sent, a)) {
                        Some(k) => {
                            let k = restore_overwritten(target, &id, k).await;
                            (Response::Kept(k.recorded), k.evidence)
                        }
                        None => (Response::Ok, Evidence::default()),
                    }
                }
                Err(TargetError::NotFound) => (Response::Gone, Evidence::default()),
                Err(e) => (Response::Failed(e), Evidence::default()),
            };
        }
        Job::DeleteUser { id } => target.delete_user(&id).await,
        Job::RenameGroup { id, name } => target.rename_group(&id, &name).await,
        Job::Members {
            group,
            add,
            members,
        } => {
            if add {
                target.add_members(&group, &members).await
            } else {
                target.remove_members(&group, &members).await
            }
        }
        Job::DeleteGroup { id } => target.delete_group(&id).await,
    };
    let response = match result {
        Ok(()) => Response::Ok,
        Err(TargetError::NotFound) => Response::Gone,
        Err(e) => Response::Failed(e),
    };
    (response, Evidence::default())
}

/// `sent` as the target answered holding user `id` (see [`kept::judge`]): the
/// values to record, and what the answer showed the target keeps.
async fn as_stored<T: Target>(
    target: &T,
    id: &ScimId,
    sent: UserAttrs,
    answer: &RemoteUser,
) -> (UserAttrs, Evidence) {
    let rules = target.rules();
    // What the schema says the target does not hold is not judged: it is
    // recorded as wanted, and the planner never compares it.
    let judged = sent.iter().filter(|(a, _)| !rules.unheld.contains(a));
    let Some(k) = kept::judge(judged, answer) else {
        return (sent, Evidence::default());
    };
    let k = restore_overwritten(target, id, k).await;
    let mut recorded: UserAttrs = k
        .recorded
        .into_iter()
        .filter_map(|(a, v)| v.map(|v| (a, v)))
        .collect();
    for (a, v) in &sent {
        if rules.unheld.contains(&a) {
            recorded.insert(a, v);
        }
    }
    (recorded, k.evidence)
}

/// Atlassian sets first and last name from a `displayName` it is sent: the
/// name parts a write overwrote so are sent again at once, alone (which the
/// target keeps), so the write converges in one operation. If that fails,
/// what the target holds is recorded and the next cycle sends them again.
async fn restore_overwritten<T: Target>(target: &T, id: &ScimId, mut kept: Kept) -> Kept {
    let overwritten = std::mem::take(&mut kept.overwritten);
    if overwritten.is_empty() {
        return kept;
    }
    let changes: Vec<(UserAttr, Option<String>)> = overwritten
        .iter()
        .map(|(a, v)| (*a, Some(v.clone())))
        .collect();
    let again = match target.patch_user(id, &changes, None).await {
        Ok(Some(answer)) => kept::judge(overwritten.iter().map(|(a, v)| (*a, v.as_str())), &answer),
        // No resource in the answer: what was sent is what is known.
        Ok(None) => Some(Kept {
            recorded: changes,
            ..Kept::default()
        }),
        Err(e) => {
            tracing::debug!(user = %id, error = %e, "name parts overwritten by displayName not sent again; the next cycle sends them");
            None
        }
    };
    if let Some(again) = again {
        for (attr, value) in again.recorded {
            if let Some(slot) = kept.recorded.iter_mut().find(|(a, _)| *a == attr) {
                slot.1 = value;
            }
        }
        kept.evidence.noted.extend(again.evidence.noted);
        kept.evidence.kept.extend(again.evidence.kept);
    }
    kept
}

/// Creates a user; on a conflict (the user exists, perhaps from a create that
/// timed out but succeeded) finds it by `userName`, brings it in line and adopts
/// it. `lookup_first`: an interrupted run may have created it already.
async fn create_user<T: Target>(
    target: &T,
    attrs: UserAttrs,
    lookup_first: bool,
) -> (Response, Evidence) {
    let user_name = UserName::new(attrs.get(UserAttr::UserName).unwrap_or_default());
    if !lookup_first {
        match target.create_user(&attrs).await {
            Ok(created) => {
                let (attrs, notes) = as_stored(target, &created.id, attrs, &created).await;
                return (
                    Response::UserCreated {
                        id: created.id,
                        ownership: Ownership::Created,
                        attrs,
                    },
                    notes,
                );
            }
            Err(TargetError::Conflict { .. }) => {}
            Err(e) => return (Response::Failed(e), Evidence::default()),
        }
    }
    let existing = match target.find_user(&user_name).await {
        Ok(found) => found,
        Err(e) => return (Response::Failed(e), Evidence::default()),
    };
    let Some(remote) = existing else {
        if lookup_first {
            // The interrupted create never reached the target: create it now.
            return Box::pin(create_user(target, attrs, false)).await;
        }
        return (
            Response::Failed(TargetError::Conflict {
                detail: format!(
                    "the target reports a conflict for userName {:?} but no user with that name can be found",
                    user_name.as_str()
                ),
            }),
            Evidence::default(),
        );
    };
    (
        Response::Existing {
            remote,
            attrs,
            lookup_first,
        },
        Evidence::default(),
    )
}

/// Brings an existing account found after a conflict (or a resumed create) in
/// line with `attrs`, as the account of `key`.
async fn adopt_existing<T: Target>(
    target: &T,
    remote: RemoteUser,
    attrs: UserAttrs,
    lookup_first: bool,
) -> (Response, Evidence) {
    // Brought in line with the source (see `TargetRules::adopted_holds`),
    // except what the target does not hold.
    let rules = target.rules();
    let changes: Vec<(UserAttr, Option<String>)> = attrs
        .iter()
        .filter(|(a, v)| {
            !rules.unheld.contains(a) && !rules.adopted_holds(*a, remote.attrs.get(a), v)
        })
        .map(|(a, v)| (a, Some(v.to_owned())))
        .collect();
    let mut answer = remote.clone();
    if !changes.is_empty() || !remote.active {
        match target
            .patch_user(&remote.id, &changes, (!remote.active).then_some(true))
            .await
        {
            Ok(Some(patched)) => answer = patched,
            // No resource in the answer: what was sent is what is known.
            Ok(None) => {
                for (a, v) in &changes {
                    if let Some(v) = v {
                        answer.attrs.insert(*a, v.clone());
                    }
                }
            }
            Err(e) => return (Response::Failed(e), Evidence::default()),
        }
    }
    let (attrs, notes) = as_stored(target, &remote.id, attrs, &answer).await;
    (
        Response::UserCreated {
            id: remote.id,
            ownership: if lookup_first {
                Ownership::Created
            } else {
                Ownership::Adopted
            },
            attrs,
        },
        notes,
    )
}

/// Why a create is refused: its userName belongs to another managed user's
/// account.
fn refused(key: &SourceKey, user_name: &UserName, holder: &SourceKey, status: Status) -> String {
    format!(
        "userName {:?} belongs to the account of user {holder} ({}), so user {key} is not created and {holder}'s account is not given to it (policy.reuse_accounts: never); free the address in the target (delete or rename {holder}'s account; remove_action: delete does it for leavers) or set policy.reuse_accounts: after_removal to hand a leaver's account to {key}",
        user_name.as_str(),
        status.as_str()
    )
}

/// Why a rename is refused: the new userName belongs to another managed user's
/// account, and an existing user never takes over another account.
fn rename_refused(
    key: &SourceKey,
    user_name: &UserName,
    holder: &SourceKey,
    status: Status,
) -> String {
    format!(
        "userName {:?} belongs to the account of user {holder} ({}), so user {key} cannot be renamed to it; free the address in the target (delete or rename {holder}'s account; remove_action: delete does it for leavers)",
        user_name.as_str(),
        status.as_str()
    )
}

async fn create_group<T: Target>(
    target: &T,
    name: &GroupName,
    external_id: &str,
    members: &[MemberRef],
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
