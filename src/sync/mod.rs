//! The engine: one sync cycle — read → map → plan → guard → apply → record —
//! as named steps, of which every command runs a prefix (see [`cycle`]):
//! `sync` and the daemon all of them, `plan` and `sync --dry-run` the
//! planning half, so a dry run is the same plan, rendered and stopped.
//! `inspect` gathers what `status` and `explain` show; `daemon` runs cycles
//! on a schedule; `quarantine` backs cycles off
//! a failing target; `observe` writes the metrics file and `notify` sends
//! alerts after each cycle (to a webhook, and by `email`); `vitals` is what
//! the daemon's endpoint answers (`/metrics`, `/healthz`, `/readyz`).

pub mod audit;
pub mod daemon;
pub mod email;
pub mod facts;
pub mod inspect;
pub mod notify;
pub mod observe;
pub mod only;
pub mod quarantine;
mod resume;
pub mod revert;
#[cfg(test)]
mod tests;
pub mod vitals;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use serde::Serialize;

use crate::apply::{Executor, FailedOp, Progress, RequiredPaths, Stop, Target, TargetError};
use crate::config::{ConfigError, Settings};
use crate::mapping::{Mapping, RecordError};
pub use crate::model::Exit;
use crate::model::TargetRules;
use crate::model::{
    Desired, MemberResolver, Mirror, MirrorDigest, RemoteUser, ScimId, SourceAssignments,
    SourceKey, State, StateChange, Status, TargetSnapshot,
};
use crate::plan::{self, Operation, Plan, PlanningInput, Summary, guard::GuardStop};
use crate::scim::{ClientOptions, RetryPolicy, ScimClient, ScimError};
use crate::source::{Source, SourceError, StreamedRead, StreamedSource};
use crate::state::{Retention, RunEnd, StateDb, StateError};

/// How long `plan` waits for the target when it looks whether a state-less
/// sync would meet existing users or groups.
const QUICK_LOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Record errors listed in full before the rest are counted.
const MAX_LISTED_RECORD_ERRORS: usize = 50;

/// `--full` believes a listing of the target only when it holds at least this
/// share (percent) of the users (and of the groups) the state has as live. A
/// listing that drops entries (a proxy, a broken page, an API that filters)
/// would otherwise turn everyone it left out into "deleted by hand"; losing
/// half of a directory by hand between two cycles is not a thing that happens,
/// and the few objects that really were deleted are confirmed one by one.
const MIN_LISTED_SHARE_PERCENT: u64 = 50;

/// What `sync` was asked to do.
#[derive(Clone, Debug, Default)]
pub struct SyncOptions {
    /// Read the whole target too: adopt, repair drift, recreate what is missing.
    pub full: bool,
    /// Plan, guard and stop.
    pub dry_run: bool,
    /// Apply this saved plan instead of planning.
    pub plan_file: Option<PathBuf>,
    /// The operator's reviewed override of the removal guards.
    pub allow_deletes: bool,
    /// `--only`: plan and apply just these users (key, userName or email) and
    /// their memberships.
    pub only: Vec<String>,
    /// `--force`: run even while the quarantine holds cycles back.
    pub force: bool,
    /// Set by a cycle after a run killed with changes in flight (see
    /// `resume`): the target is read whole and planned against, as `--full`
    /// does, while the source is read as usual (an incremental source from
    /// its delta links, which `--full` drops).
    pub settle: bool,
    /// Set by `plan` and `sync --dry-run` after such a run: the creates it
    /// started that the target holds, applied to the state in memory before
    /// planning (a cycle records them in the DB first).
    pub settled: Vec<StateChange>,
    /// The process exits once this cycle ends (a one-shot `idsync sync`):
    /// the state and the mirror the cycle held are left for the exit to
    /// free, all at once, rather than freed record by record (a twentieth of
    /// a no-change cycle at 100,000 users). A daemon's cycles free them.
    pub exits_after: bool,
}

/// Why a cycle (or a plan) stopped. The command line turns each into an exit
/// code and a hint.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Records the mapping refused; nothing was planned.
    #[error(
        "{total} source record{} cannot be mapped; nothing was planned or changed:\n{}",
        if *.total == 1 { "" } else { "s" },
        .listed.join("\n")
    )]
    Mapping { total: usize, listed: Vec<String> },
    #[error(transparent)]
    State(#[from] StateError),
    /// The state DB failed while a run was applying: work committed before is safe.
    #[error("the run stopped because the state DB could not be written: {0}")]
    StateWrite(StateError),
    #[error("target: {0}")]
    TargetSetup(ScimError),
    #[error("target: {0}")]
    Target(TargetError),
    /// `--full`: the target's listing holds far fewer of the objects idsync
    /// manages than the state: a failed read, not a mass deletion.
    #[error(
        "target: the listing of /{collection} holds {listed} of the {managed} {collection} idsync manages; a listing that short is treated as a failed read, and nothing was changed"
    )]
    PartialListing {
        collection: &'static str,
        listed: u64,
        managed: u64,
    },
    /// A guard held the plan back; `held` are the removals it held.
    #[error("{stop}{}", if *.dry_run { "" } else { "; nothing was changed" })]
    Guard {
        stop: GuardStop,
        held: Vec<Operation>,
        dry_run: bool,
    },
    #[error("cannot read {}: {message}", .path.display())]
    PlanUnreadable { path: PathBuf, message: String },
    #[error("{} is not an idsync plan: {message}", .path.display())]
    NotAPlan { path: PathBuf, message: String },
    #[error(
        "the saved plan {} is stale: the config, the mapping or the state changed since it was made, or the file was edited",
        .path.display()
    )]
    StalePlan { path: PathBuf },
    /// The state DB records nothing idsync did, but the target holds users or
    /// groups: a lost state DB, or a first run that should adopt.
    #[error(
        "the state DB {} records no users, groups or runs, but the target already holds users or groups (a lost or new state DB?); a plain sync would duplicate groups, so nothing was changed",
        .path.display()
    )]
    NoState { path: PathBuf },
    /// `revert RUN` cannot make a plan for that run.
    #[error("cannot revert run #{run}: {reason}")]
    CannotRevert { run: i64, reason: String },
    /// `--only` named a user neither the source nor the state knows.
    #[error(
        "--only {asked:?}: no user with that key, userName or email is in the source or the state DB"
    )]
    UnknownUser { asked: String },
    /// A saved plan names an object other than the one the state records.
    #[error(
        "the saved plan {} does not match the state DB, so none of it was applied: {mismatch}",
        .path.display()
    )]
    PlanMismatch {
        path: PathBuf,
        mismatch: plan::PlanMismatch,
    },
    /// `paused: true`: the cycle is skipped before anything is read or sent.
    #[error(
        "provisioning is paused (`paused: true` in {}): sync and daemon cycles read and send nothing",
        .config.display()
    )]
    Paused { config: PathBuf },
    /// The quarantine holds cycles back after repeated failures: the cycle is
    /// skipped before anything is read or sent.
    #[error(
        "cycles are quarantined until {} after {failed_cycles} failed cycles in a row (last failure: {})",
        .until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        .reason.as_deref().unwrap_or("unknown")
    )]
    Quarantined {
        until: chrono::DateTime<chrono::Utc>,
        failed_cycles: u32,
        reason: Option<String>,
    },
}

impl SyncError {
    /// What the operator should do next.
    pub fn hint(&self) -> Option<String> {
        let text = match self {
            SyncError::Config(e) => return e.hint(),
            SyncError::Source(e) => return Some(e.hint().into_owned()),
            SyncError::State(e) => {
                return e.hint().or_else(|| {
                    Some("check the `state:` path and its permissions; the DB is never changed by a failed open".into())
                });
            }
            SyncError::Mapping { .. } => {
                "fix the records (or the mapping) listed above, then run again"
            }
            SyncError::StateWrite(e) => {
                return e.hint().or_else(|| {
                    Some("operations committed before this are safe; free disk space or fix the DB's permissions, then run sync again (it resumes without duplicates)".into())
                });
            }
            SyncError::TargetSetup(_) => "check the target section of the config",
            SyncError::Target(TargetError::Unauthorized { .. }) => {
                "check the SCIM token (token_env / token_file) and that it belongs to this directory"
            }
            SyncError::Target(_) => {
                "check target.base_url and that the target is reachable from here"
            }
            SyncError::PartialListing { .. } => {
                "the target (or a proxy in front of it) returned an incomplete listing: run again later; if those objects really were deleted in the target, run `idsync sync` without --full (an update answered 404 marks an object removed, and the next cycle recreates it)"
            }
            SyncError::Guard { stop, .. } => stop.hint(),
            SyncError::PlanUnreadable { .. } => return None,
            SyncError::NotAPlan { .. } => "save plans with `idsync plan --out FILE`",
            SyncError::StalePlan { .. } => {
                "make a new plan with `idsync plan --out` and review it again (full plans cannot be saved: run `sync --full`)"
            }
            SyncError::NoState { .. } => {
                "if the state DB was lost, restore it from a backup; otherwise run `idsync sync --full` once: it reads the target and adopts existing users and groups by name"
            }
            SyncError::CannotRevert { .. } => "`idsync status` lists the runs the history keeps",
            SyncError::UnknownUser { .. } => {
                "check the spelling; `idsync explain KEY|EMAIL` shows what the source and the state know"
            }
            SyncError::PlanMismatch { .. } => {
                "the plan file was changed after `plan --out` wrote it; make a new plan with `idsync plan --out` and review it again"
            }
            SyncError::Paused { .. } => {
                "set `paused: false` (or remove the line) to resume provisioning"
            }
            SyncError::Quarantined { .. } => {
                "`idsync status` shows the failures; `idsync sync --force` runs a cycle now, and one that succeeds lifts the quarantine"
            }
        };
        Some(text.to_string())
    }

    /// The exit code this failure ends a command with.
    pub fn exit(&self) -> Exit {
        match self {
            SyncError::Source(e) if e.is_unavailable() => Exit::Unreachable,
            SyncError::State(StateError::Locked { .. }) => Exit::Locked,
            SyncError::StateWrite(_) => Exit::Partial,
            SyncError::Target(_) | SyncError::PartialListing { .. } => Exit::Unreachable,
            SyncError::Guard { .. } | SyncError::NoState { .. } => Exit::Guard,
            SyncError::Paused { .. } => Exit::Paused,
            SyncError::Quarantined { .. } => Exit::Quarantined,
            SyncError::Config(_)
            | SyncError::Source(_)
            | SyncError::Mapping { .. }
            | SyncError::State(_)
            | SyncError::TargetSetup(_)
            | SyncError::PlanUnreadable { .. }
            | SyncError::NotAPlan { .. }
            | SyncError::StalePlan { .. }
            | SyncError::UnknownUser { .. }
            | SyncError::CannotRevert { .. }
            | SyncError::PlanMismatch { .. } => Exit::Usage,
        }
    }
}

/// What a `sync` did.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub summary: Summary,
    pub applied: u64,
    pub failed: u64,
    pub skipped: u64,
    /// Of `skipped`, the operations not sent because their action is
    /// switched off (`policy.actions`).
    #[serde(skip_serializing_if = "is_zero")]
    pub skipped_action_off: u64,
    pub duration_ms: u64,
    pub exit_code: Exit,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<FailedOp>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Source groups left unchanged (they share a name; named in `warnings`):
    /// the run ends with exit 1 even when every operation succeeded.
    #[serde(skip_serializing_if = "is_zero")]
    pub held_groups: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    pub dry_run: bool,
    /// The plan a dry run stopped at, for the text output.
    #[serde(skip)]
    pub dry_run_plan: Option<Plan>,
    /// Users and groups in scope in the source, when it was read (for metrics).
    #[serde(skip)]
    pub source_objects: Option<facts::SourceCounts>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The SCIM client for the configured target (reads the token).
pub fn client(settings: &Settings) -> Result<ScimClient, SyncError> {
    let t = &settings.target;
    let token = t.token.read().map_err(ConfigError::from)?;
    ScimClient::new(ClientOptions {
        base_url: t.base_url.clone(),
        token,
        flavour: t.flavour,
        rate_limit: t.rate_limit,
        timeout: t.timeout,
        retry: t.retry,
        page_size: t.page_size,
        member_chunk: t.member_chunk,
        adaptive_ceiling: t.concurrency.adaptive(),
    })
    .map_err(SyncError::TargetSetup)
}

/// A source's mirror after this cycle's read, with a digest of what it held
/// before (see [`Source::mirrored`]): what changed is committed only once
/// the cycle applied.
#[derive(Clone, Debug)]
pub struct MirrorUpdate {
    pub old: MirrorDigest,
    pub new: Mirror,
}

/// Reads the source and maps it; record errors fail with all of them listed.
/// A source with a mirror reads the changes since `mirror` and returns the
/// updated mirror beside the snapshot. A streamed source is read blocking, on
/// the calling thread: only for the thread `planning_input` sets aside.
async fn desired(
    settings: &Settings,
    source: &dyn Source,
    mirror: Option<Mirror>,
) -> Result<(Desired, Option<Mirror>), SyncError> {
    let started = Instant::now();
    let attributes = settings.mapping.source_attributes();
    // Users mapped without their groups leave the groups' read free to run
    // beside theirs.
    let beside = match (&mirror, source.streamed()) {
        (None, Some(streamed)) if !settings.mapping.users_need_groups() => Some(streamed),
        _ => None,
    };
    let streamed = if mirror.is_none() && beside.is_none() {
        source.stream(&attributes)
    } else {
        None
    };
    let (built, users, mirror, read) = match (beside, streamed, source.mirrored().zip(mirror)) {
        (Some(source), _, _) => {
            let (built, users, read) = mapped_beside_groups(source, &settings.mapping)?;
            (built, users, None, read)
        }
        (None, Some(streamed), _) => {
            // The read time includes mapping the users, done as they arrive.
            let (built, users, read) = stream_mapped(streamed, None, 0, &settings.mapping).await?;
            (built, users, None, read)
        }
        (None, None, Some((mirrored, mirror))) => {
            // The users are mapped as the directory is read from the mirror.
            let (mirror, assignments) = mirrored.update(&attributes, mirror).await?;
            let (built, users, read) = stream_mapped(
                mirrored.directory(&mirror),
                assignments.as_ref(),
                mirror.users.len(),
                &settings.mapping,
            )
            .await?;
            (built, users, Some(mirror), read)
        }
        (None, None, None) => {
            let dir = source.read(&attributes).await?;
            let read = started.elapsed();
            let users = dir.users.len();
            (settings.mapping.build(dir), users, None, read)
        }
    };
    let desired = built.map_err(|errors| {
        let total = errors.len();
        let mut listed: Vec<String> = errors
            .iter()
            .take(MAX_LISTED_RECORD_ERRORS)
            .map(|e| format!("  {e}"))
            .collect();
        if total > MAX_LISTED_RECORD_ERRORS {
            listed.push(format!("  … and {} more", total - MAX_LISTED_RECORD_ERRORS));
        }
        SyncError::Mapping { total, listed }
    })?;
    tracing::info!(
        users,
        in_scope = desired.users.len(),
        groups = desired.groups.len(),
        read_ms = read.as_millis() as u64,
        map_ms = (started.elapsed() - read).as_millis() as u64,
        "source read"
    );
    if desired.ignored_members > 0 {
        tracing::info!(
            count = desired.ignored_members,
            "group members that are not in-scope users were ignored"
        );
    }
    Ok((desired, mirror))
}

/// What a streamed read gives: the build, the number of users read, and how
/// long the read took (the users mapped as they arrived).
type StreamedBuild = (Result<Desired, Vec<RecordError>>, usize, Duration);

/// Reads a source that streams its users and maps each as it arrives (the
/// records are never all held). `assignments`: the source's own, when it has
/// them; `expected_users`: how many users it has, when known. A failed read
/// wins over mapping errors, as when the directory is read whole first.
async fn stream_mapped(
    mut source: Box<dyn StreamedRead + '_>,
    assignments: Option<&SourceAssignments>,
    expected_users: usize,
    mapping: &Mapping,
) -> Result<StreamedBuild, SourceError> {
    let started = Instant::now();
    let mut groups = source.groups().await?;
    let mut mapper = match mapping.user_mapper(&groups, assignments, expected_users) {
        Ok(mapper) => mapper,
        Err(errors) => {
            source.users(&mut |_, _| {}).await?;
            source.finish(&mut groups)?;
            return Ok((Err(errors), 0, started.elapsed()));
        }
    };
    source
        .users(&mut |user, groups| match groups {
            Some(groups) => mapper.push_in(user, groups),
            None => mapper.push(user),
        })
        .await?;
    let mapped = mapper.finish();
    let unresolved = source.finish(&mut groups)?;
    let read = started.elapsed();
    let users = mapped.read();
    Ok((
        mapping.build_groups(mapped, groups, unresolved),
        users,
        read,
    ))
}

/// A streamed read whose users the mapping maps without their groups (no
/// `member_of` scope clause, no `assign`): the groups are read on a thread of
/// their own while the users are read and mapped, then the groups are built
/// from both. At a million users the groups' read is a tenth of a cycle's
/// work, taken off its longest path. A failed read wins over mapping errors,
/// and the groups' failure over the users', as when the groups are read
/// first.
fn mapped_beside_groups(
    source: &dyn StreamedSource,
    mapping: &Mapping,
) -> Result<StreamedBuild, SourceError> {
    let started = Instant::now();
    std::thread::scope(|scope| {
        let groups = scope.spawn(|| source.read_groups());
        let mut mapper = mapping
            .user_mapper(&[], None, 0)
            .unwrap_or_else(|_| unreachable!("a mapping that needs no groups names none"));
        let users = source.read_users(&mut |user| mapper.push(user));
        let groups = groups
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let (groups, ()) = (groups?, users?);
        let mapped = mapper.finish();
        let read = started.elapsed();
        let users = mapped.read();
        Ok((mapping.build_groups(mapped, groups, 0), users, read))
    })
}

/// Builds the one planning input: the source read and mapped, the state loaded
/// (with the attributes the planner compares), and for `--full` the target read.
/// For a source with a mirror, also the mirror as loaded and as updated by the
/// read (nothing is written here); `restart_source` reads it from scratch,
/// without its delta links.
pub async fn planning_input<T: Target>(
    settings: &Settings,
    source: &dyn Source,
    mut db: Option<&mut StateDb>,
    full_target: Option<&T>,
    restart_source: bool,
    rules: TargetRules,
    settled: &[StateChange],
) -> Result<(PlanningInput, Option<MirrorUpdate>), SyncError> {
    let old_mirror = if source.mirrored().is_some() {
        Some(match db.as_mut() {
            Some(db) => db.load_mirror()?,
            None => Mirror::default(),
        })
    } else {
        None
    };
    // A digest of the loaded mirror, not a copy: at 100,000 users a copy is
    // hundreds of megabytes.
    let old_digest = old_mirror.as_ref().map(MirrorDigest::of);
    // `--full` is a full resync on both sides: a source with a mirror reads
    // everything again too (without links, the adapter starts a full round).
    let mirror_in = old_mirror.map(|mut m| {
        if restart_source {
            m.users_link = None;
            m.groups_link = None;
        }
        m
    });
    // The state DB is loaded on its own thread while the source is read and
    // mapped: the two are independent, and on large directories each takes
    // seconds.
    let (desired, db, loaded) = tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let loader = scope.spawn(move || {
                let mut db = db;
                let loaded = db.as_mut().map(|db| db.load());
                (db, loaded)
            });
            let read = desired(settings, source, mirror_in);
            let desired = match one_thread_runtime(source) {
                Some(runtime) => runtime.block_on(read),
                None => tokio::runtime::Handle::current().block_on(read),
            };
            let (db, loaded) = loader.join().expect("the state loader does not panic");
            (desired, db, loaded)
        })
    });
    let (desired, new_mirror) = desired?;
    let mirror = old_digest
        .zip(new_mirror)
        .map(|(old, new)| MirrorUpdate { old, new });
    let mut state = loaded.transpose()?.unwrap_or_default();
    for change in settled {
        state.apply(change);
    }
    // A settled user's attributes are the target's, not an older record's.
    let settled_keys: HashSet<&SourceKey> = settled
        .iter()
        .filter_map(|change| match change {
            StateChange::PutUser { key, .. } => Some(key),
            _ => None,
        })
        .collect();
    let target = match full_target {
        Some(t) => Some(read_target(t, &state, settings.target.concurrency.slots()).await?),
        None => None,
    };
    let mut options = settings.plan_options();
    options.target_rules = rules;
    if let Some(db) = db.as_ref() {
        options.notes = db.note_summaries()?;
    }
    let input = PlanningInput::new(
        desired,
        state,
        target,
        options,
        |state: &mut State, keys: &[SourceKey]| match &db {
            Some(db) => db.load_attrs(state, keys.iter().filter(|key| !settled_keys.contains(key))),
            None => Ok(()),
        },
    )?;
    Ok((input, mirror))
}

/// A runtime on the reading thread alone, for a source that reads best so
/// ([`Source::reads_on_one_thread`]); `None` for the others, and should the
/// system refuse one (the shared runtime then reads, as for any source).
fn one_thread_runtime(source: &dyn Source) -> Option<tokio::runtime::Runtime> {
    if !source.reads_on_one_thread() {
        return None;
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .inspect_err(|e| tracing::debug!(error = %e, "no runtime of its own for the read"))
        .ok()
}

/// `--full`: the whole target, as far as idsync's own objects go, trusted.
/// A listing far smaller than the state is a failed read; an object the state
/// has as live that the listing left out is looked up by id, and only a 404
/// makes it missing (so it is recreated, or its leaver's removal dropped).
async fn read_target<T: Target>(
    target: &T,
    state: &State,
    concurrency: usize,
) -> Result<TargetSnapshot, SyncError> {
    let mut snapshot = target.read_all().await.map_err(SyncError::Target)?;
    let listed_users: HashSet<&ScimId> = snapshot.users.iter().map(|u| &u.id).collect();
    let unlisted_users = unlisted(
        "Users",
        state
            .users
            .values()
            .filter(|u| u.status != Status::Removed)
            .map(|u| u.scim_id.to_scim_id()),
        &listed_users,
    )?;
    let listed_groups: HashSet<&ScimId> = snapshot.groups.iter().map(|g| &g.id).collect();
    let unlisted_groups = unlisted(
        "Groups",
        state
            .groups
            .values()
            .filter(|g| g.status != Status::Removed)
            .map(|g| g.scim_id.clone()),
        &listed_groups,
    )?;
    let width = concurrency.max(1);
    let users = confirm(&unlisted_users, width, |id| target.get_user(id)).await?;
    let groups = confirm(&unlisted_groups, width, |id| target.get_group(id)).await?;
    if !unlisted_users.is_empty() || !unlisted_groups.is_empty() {
        tracing::warn!(
            users = unlisted_users.len(),
            users_found = users.len(),
            groups = unlisted_groups.len(),
            groups_found = groups.len(),
            "the target's listing left out objects idsync manages; looked up by id, those found are kept"
        );
    }
    snapshot.users.extend(users);
    snapshot.groups.extend(groups);
    // Members of idsync's groups that name no listed user are looked up too:
    // only a 404 makes one dangling (removed by the plan), so a listing that
    // left a user out cannot cost that user a membership.
    let unresolved = unresolved_members(&snapshot, state);
    if !unresolved.is_empty() {
        let answers: Vec<(String, Result<Option<RemoteUser>, TargetError>)> = stream::iter(
            unresolved
                .into_iter()
                .map(|(value, id)| async move { (value, target.get_user(&id).await) }),
        )
        .buffer_unordered(width)
        .collect()
        .await;
        for (value, answer) in answers {
            match answer {
                Ok(Some(user)) => snapshot.users.push(user),
                Ok(None) => {
                    snapshot.gone_members.insert(value);
                }
                // Not known to be gone: left alone.
                Err(error) => tracing::warn!(
                    member = ?value,
                    error = ?error.to_string(),
                    "a group member that names no listed user could not be looked up; it is kept"
                ),
            }
        }
        tracing::info!(
            dangling = snapshot.gone_members.len(),
            "group members that name no listed user were looked up by id; those not found are dangling"
        );
    }
    Ok(snapshot)
}

/// The member values of live managed groups that resolve to no user of the
/// snapshot (by id, `$ref` or userName), each once, with the id to look up
/// (the `$ref`'s, else the value).
fn unresolved_members(snapshot: &TargetSnapshot, state: &State) -> Vec<(String, ScimId)> {
    let managed: HashSet<&ScimId> = state
        .groups
        .values()
        .filter(|g| g.status != Status::Removed)
        .map(|g| &g.scim_id)
        .collect();
    let resolver = MemberResolver::new(&snapshot.users);
    let mut seen = HashSet::new();
    snapshot
        .groups
        .iter()
        .filter(|g| managed.contains(&g.id))
        .flat_map(|g| g.members.iter())
        .filter(|m| resolver.user_of(m).is_none())
        .filter(|m| seen.insert(m.value.clone()))
        .map(|m| {
            let id = m
                .ref_id
                .clone()
                .unwrap_or_else(|| ScimId::new(m.value.as_str()));
            (m.value.clone(), id)
        })
        .collect()
}

/// The live ids (`managed`) the listing (`listed`) left out, or a
/// [`SyncError::PartialListing`] when it left out too many to be believed.
fn unlisted(
    collection: &'static str,
    managed: impl Iterator<Item = ScimId>,
    listed: &HashSet<&ScimId>,
) -> Result<Vec<ScimId>, SyncError> {
    let mut total = 0u64;
    let missing: Vec<ScimId> = managed
        .inspect(|_| total += 1)
        .filter(|id| !listed.contains(id))
        .collect();
    let found = total - missing.len() as u64;
    if found * 100 < total * MIN_LISTED_SHARE_PERCENT {
        return Err(SyncError::PartialListing {
            collection,
            listed: found,
            managed: total,
        });
    }
    Ok(missing)
}

/// Looks each id up (`width` at a time); returns the objects the target still
/// holds. Any answer but the object or a 404 fails the read.
async fn confirm<'a, R, F>(
    ids: &'a [ScimId],
    width: usize,
    get: impl Fn(&'a ScimId) -> F,
) -> Result<Vec<R>, SyncError>
where
    F: std::future::Future<Output = Result<Option<R>, TargetError>> + 'a,
{
    let found: Vec<Result<Option<R>, TargetError>> = stream::iter(ids.iter().map(get))
        .buffer_unordered(width)
        .collect()
        .await;
    let mut out = Vec::new();
    for result in found {
        if let Some(object) = result.map_err(SyncError::Target)? {
            out.push(object);
        }
    }
    Ok(out)
}

/// The command `sync --only` runs are recorded under: provisioning on demand,
/// not a cycle of the whole directory.
pub const ONLY_COMMAND: &str = "sync --only";

impl SyncOptions {
    /// The command a run is recorded under in the history, whether it
    /// finished or stopped.
    pub fn command(&self) -> &'static str {
        match (&self.plan_file, self.full, self.only.is_empty()) {
            (Some(_), _, _) => "sync --plan",
            (None, true, _) => "sync --full",
            (None, false, false) => ONLY_COMMAND,
            (None, false, true) => "sync",
        }
    }
}

/// What a plan is made for: it decides whether a stop is an error and how
/// hard the target is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// `plan`: the stops a sync would make are shown beside the plan.
    Review,
    /// `sync --dry-run`: the stops a sync would make end it, as errors.
    DryRun,
    /// A real sync.
    Sync,
}

/// Steps 3–6 done: a plan a sync may apply.
pub struct Planned {
    pub plan: Plan,
    pub input: PlanningInput,
    /// For a source with a mirror: the mirror to commit once the plan applied.
    mirror: Option<MirrorUpdate>,
    /// [`Purpose::Review`] only: the stops a sync of this plan would make, in
    /// the order it would meet them.
    pub would_stop: Vec<SyncError>,
    /// The plan counts what an interrupted run had in flight as settled, in
    /// memory only (see `settle_in_memory`): until a `sync` records that, it
    /// cannot be saved for `sync --plan`.
    pub settled_in_memory: bool,
}

/// Steps 3–6, the one sequence every command that plans runs: plan, `--only`,
/// guards, lost state. `target` is read for `--full` and asked whether it
/// holds anything when the state records nothing. A [`Purpose::Review`]
/// collects the stops; the others fail at the first.
async fn plan_checked<T: Target>(
    settings: &Settings,
    source: &dyn Source,
    mut db: Option<&mut StateDb>,
    target: Option<&T>,
    rules: TargetRules,
    opts: &SyncOptions,
    purpose: Purpose,
) -> Result<Planned, SyncError> {
    let full_target = target.filter(|_| opts.full || opts.settle);
    let (input, mirror) = planning_input(
        settings,
        source,
        db.as_deref_mut(),
        full_target,
        opts.full,
        rules,
        &opts.settled,
    )
    .await?;
    let plan = plan::plan(&input);
    let plan = restrict_to_only(plan, &input, settings, &opts.only)?;
    let mut would_stop = Vec::new();
    let mut stop = |e: SyncError| match purpose {
        Purpose::Review => {
            would_stop.push(e);
            Ok(())
        }
        Purpose::DryRun | Purpose::Sync => Err(e),
    };
    if let Err(e) = guard(
        &plan,
        settings,
        opts.allow_deletes,
        purpose != Purpose::Sync,
    ) {
        stop(e)?;
    }
    if !(opts.full || opts.settle)
        && let Some(e) = lost_state(settings, input.state(), db.as_deref(), target, purpose).await?
    {
        stop(e)?;
    }
    Ok(Planned {
        plan,
        input,
        mirror,
        would_stop,
        settled_in_memory: false,
    })
}

/// Steps 1 and 3–6 without changing anything, for `plan` and
/// `sync --dry-run`: the state DB opened read-only (none is created), the
/// target read only for `--full`; otherwise one quick look at its schema (so
/// the plan leaves out what it does not hold, as `sync` will) and, when the
/// state records nothing, at whether it holds anything.
pub async fn preview(
    settings: &Settings,
    opts: &SyncOptions,
    purpose: Purpose,
) -> Result<Planned, SyncError> {
    let mut db = StateDb::open_read_only(&settings.state_path)?;
    let skips = would_skip(settings, db.as_ref());
    let resumed = match db.as_mut() {
        Some(db) if db.interrupted_ops().is_ok_and(|ops| !ops.is_empty()) => {
            settle_in_memory(settings, db, opts).await
        }
        _ => None,
    };
    let (opts, settling) = match resumed {
        Some((opts, client)) => (opts, Some(client)),
        None => (opts.clone(), None),
    };
    // Only a plan that counts on the settling differs from the state DB's.
    let settled_in_memory = opts.settle || !opts.settled.is_empty();
    let opts = &opts;
    let (target, rules) = if let Some(client) = settling {
        let rules = client.rules();
        (Some(client), rules)
    } else if opts.full {
        let client = client(settings)?;
        client.check().await.map_err(SyncError::Target)?;
        let rules = client.rules();
        (Some(client), rules)
    } else {
        let client = quick_client(settings);
        let rules = quick_rules(client.as_ref()).await;
        (client, rules)
    };
    let mut planned = plan_checked(
        settings,
        settings.source.adapter(),
        db.as_mut(),
        target.as_ref(),
        rules,
        opts,
        purpose,
    )
    .await?;
    planned.settled_in_memory = settled_in_memory;
    match purpose {
        // Said first: a sync now would not get as far as the other stops.
        Purpose::Review => {
            planned.would_stop.splice(0..0, skips);
        }
        Purpose::DryRun | Purpose::Sync => {
            for skip in skips {
                tracing::warn!(
                    "{skip}: a `sync` now is skipped (exit {}); this dry run shows the plan it would apply",
                    skip.exit()
                );
            }
        }
    }
    Ok(planned)
}

/// `plan` and `sync --dry-run` after a run killed with changes in flight:
/// what the next `sync` settles first (see `resume`), done in memory. The
/// creates it started are looked up on the target and those found applied
/// to the state, and the target is read whole where that `sync` would read
/// it. `None` when the target cannot be asked: the plan is made from the
/// state DB as it is, with a warning that the next `sync` may differ.
async fn settle_in_memory(
    settings: &Settings,
    db: &mut StateDb,
    opts: &SyncOptions,
) -> Option<(SyncOptions, ScimClient)> {
    let looked_up = async {
        let client = client(settings)?;
        client.check().await.map_err(SyncError::Target)?;
        let (changes, settled) = resume::find_started_creates(db, &client).await?;
        let resumed = resume::resume_options(db, opts, &settled)?;
        let opts = SyncOptions {
            settled: changes,
            ..resumed.unwrap_or_else(|| opts.clone())
        };
        Ok::<_, SyncError>((opts, client, settled))
    };
    match looked_up.await {
        Ok((opts, client, settled)) => {
            tracing::warn!(
                settled_users = settled.users,
                settled_groups = settled.groups,
                reads_target = opts.settle || opts.full,
                "a run was interrupted with changes in flight; this plan settles them as the next `sync` will (the creates they started are looked up on the target, and those found count as idsync's own), without recording anything"
            );
            Some((opts, client))
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                "a run was interrupted with changes in flight, and the target could not be asked about them; the next `sync` settles them first (it looks up the creates they started and reads the target), so its plan may differ from this one"
            );
            None
        }
    }
}

/// Why a real `sync` now would be skipped (paused, then quarantined), for
/// `plan` and `sync --dry-run` to say: they are never held themselves.
fn would_skip(settings: &Settings, db: Option<&StateDb>) -> Vec<SyncError> {
    let mut skips = Vec::new();
    if settings.paused {
        skips.push(SyncError::Paused {
            config: settings.config_path.clone(),
        });
    }
    // A quarantine that cannot be read is no reason to refuse a plan.
    if let Some(db) = db
        && let Err(held @ SyncError::Quarantined { .. }) =
            held_by_quarantine_quietly(db, chrono::Utc::now())
    {
        skips.push(held);
    }
    skips
}

/// `sync --only`: the plan cut down to the users asked for (unchanged when
/// none were).
fn restrict_to_only(
    plan: Plan,
    input: &PlanningInput,
    settings: &Settings,
    asked: &[String],
) -> Result<Plan, SyncError> {
    if asked.is_empty() {
        return Ok(plan);
    }
    let keys = only::resolve(input, asked)?;
    Ok(only::restrict(
        plan,
        &keys,
        &settings.fingerprint,
        input.state().generation,
    ))
}

/// Checks `plan` against the guards; a stop carries the removals it held back.
fn guard(
    plan: &Plan,
    settings: &Settings,
    allow_deletes: bool,
    dry_run: bool,
) -> Result<(), SyncError> {
    plan::guard::check(plan, &settings.policy, allow_deletes).map_err(|stop| {
        let held = plan
            .operations
            .iter()
            .filter(|op| stop.holds(op))
            .cloned()
            .collect();
        SyncError::Guard {
            stop,
            held,
            dry_run,
        }
    })
}

/// Would a plain sync stop on a lost state DB? It does when the state records
/// nothing idsync did but `target` holds users or groups: users would be
/// re-adopted through 409s, but groups would be created again beside the old
/// ones on targets that allow duplicate names (`sync --full` adopts both by
/// name). Returns that stop, or `None`.
///
/// A real sync fails when it cannot tell. `plan` and a dry run never need the
/// target: without one (no token) they do not ask, and a failure to answer is
/// only logged.
async fn lost_state<T: Target>(
    settings: &Settings,
    state: &State,
    db: Option<&StateDb>,
    target: Option<&T>,
    purpose: Purpose,
) -> Result<Option<SyncError>, SyncError> {
    let must_know = purpose == Purpose::Sync;
    let nothing = match records_nothing(state, db) {
        Ok(nothing) => nothing,
        Err(e) if must_know => return Err(e.into()),
        Err(_) => false,
    };
    let Some(target) = target.filter(|_| nothing) else {
        return Ok(None);
    };
    match target.holds_anything().await {
        Ok(true) => Ok(Some(SyncError::NoState {
            path: settings.state_path.clone(),
        })),
        Ok(false) => Ok(None),
        Err(e) if must_know => Err(SyncError::Target(e)),
        Err(e) => {
            tracing::debug!(error = %SyncError::Target(e), "could not tell whether the target is empty");
            Ok(None)
        }
    }
}

/// Whether the state DB records nothing idsync ever did: no users, no groups,
/// and no run that had operations (a run killed mid-way has its journal, and
/// resumes). A deleted, emptied or replaced DB looks like this too.
fn records_nothing(state: &State, db: Option<&StateDb>) -> Result<bool, StateError> {
    if !state.users.is_empty() || !state.groups.is_empty() {
        return Ok(false);
    }
    match db {
        Some(db) => Ok(!db.ever_planned()?),
        None => Ok(true),
    }
}

/// A client for one quick look that planning does not need: one attempt per
/// request, a short timeout; `None` without a token.
fn quick_client(settings: &Settings) -> Option<ScimClient> {
    let t = &settings.target;
    let token = t.token.read().ok()?;
    ScimClient::new(ClientOptions {
        base_url: t.base_url.clone(),
        token,
        flavour: t.flavour,
        rate_limit: t.rate_limit,
        timeout: t.timeout.min(QUICK_LOOK_TIMEOUT),
        retry: RetryPolicy {
            max_attempts: 1,
            ..t.retry
        },
        page_size: t.page_size,
        member_chunk: t.member_chunk,
        adaptive_ceiling: None,
    })
    .ok()
}

/// What the target's schema says about the attributes it does not hold, from
/// one quick look; without a client, or when the target cannot be asked, the
/// plan is made without it (it never needs the target).
async fn quick_rules(client: Option<&ScimClient>) -> TargetRules {
    let Some(client) = client else {
        return TargetRules::default();
    };
    match client.read_schema().await {
        Ok(_) => client.rules(),
        Err(e) => {
            tracing::debug!(error = %e, "could not read the target's schema");
            TargetRules::default()
        }
    }
}

/// One `sync` against the configured source and target.
pub async fn sync(
    settings: &Settings,
    opts: &SyncOptions,
    shutdown: Arc<AtomicBool>,
    progress: &dyn Progress,
) -> Result<RunSummary, SyncError> {
    if opts.dry_run {
        return dry_run(settings, opts).await;
    }
    let client = client(settings)?;
    let mut db = StateDb::open(&settings.state_path)?;
    sync_with(settings, &client, &mut db, opts, shutdown, progress).await
}

/// One real (not dry) `sync` through `client`, on the state DB `db`: held
/// back first by the quarantine, unless `--force`.
pub async fn sync_with(
    settings: &Settings,
    client: &ScimClient,
    db: &mut StateDb,
    opts: &SyncOptions,
    shutdown: Arc<AtomicBool>,
    progress: &dyn Progress,
) -> Result<RunSummary, SyncError> {
    if !opts.force {
        held_by_quarantine(db, chrono::Utc::now())?;
    }
    let summary = cycle_on(
        db,
        settings,
        settings.source.adapter(),
        client,
        opts,
        shutdown,
        progress,
    )
    .await?;
    // Ended cleanly: the file is sealed as it is closed.
    db.seal_on_close();
    let stats = client.stats();
    tracing::info!(
        applied = summary.applied,
        failed = summary.failed,
        requests = stats.requests,
        retries = stats.retries,
        throttled = stats.throttled,
        "cycle finished"
    );
    log_concurrency(&concurrency_facts(settings, client));
    Ok(summary)
}

/// The requests in flight this cycle allowed: what `concurrency: auto`
/// chose, or the fixed number.
fn concurrency_facts(settings: &Settings, client: &ScimClient) -> facts::ConcurrencyFacts {
    let ceiling = settings.target.concurrency.slots();
    let record = client.concurrency_record();
    let r = record.clone().unwrap_or(crate::scim::PaceRecord {
        ceiling,
        last: ceiling,
        min: ceiling,
        max: ceiling,
        settled: ceiling,
        ..Default::default()
    });
    facts::ConcurrencyFacts {
        auto: record.is_some(),
        ceiling: ceiling as u64,
        settled: r.settled as u64,
        last: r.last as u64,
        min: r.min as u64,
        max: r.max as u64,
    }
}

/// `concurrency: auto settled at 12 (ceiling 32, min 3, max 14, last 12)`.
fn log_concurrency(c: &facts::ConcurrencyFacts) {
    if c.auto {
        tracing::info!(
            "concurrency: auto settled at {} (ceiling {}, min {}, max {}, last {})",
            c.settled,
            c.ceiling,
            c.min,
            c.max,
            c.last
        );
    }
}

/// The one check of the quarantine, on the state DB the cycle holds: a
/// [`SyncError::Quarantined`] while it holds cycles back at `now` (logged
/// once, with until when and why). Never for `plan` or a dry run, which do
/// not come here.
fn held_by_quarantine(db: &StateDb, now: chrono::DateTime<chrono::Utc>) -> Result<(), SyncError> {
    let held = match held_by_quarantine_quietly(db, now) {
        Ok(()) => return Ok(()),
        Err(held @ SyncError::Quarantined { .. }) => held,
        Err(other) => return Err(other),
    };
    tracing::warn!(
        "{held}: this cycle is skipped (exit {}); {}",
        held.exit(),
        held.hint().unwrap_or_default()
    );
    Err(held)
}

/// [`SyncError::Quarantined`] while the quarantine holds cycles back at
/// `now`, without a word.
fn held_by_quarantine_quietly(
    db: &StateDb,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), SyncError> {
    let q = quarantine::load(db)?;
    match q.until.filter(|_| q.holds(now)) {
        None => Ok(()),
        Some(until) => Err(SyncError::Quarantined {
            until,
            failed_cycles: q.failed_cycles,
            reason: q.reason,
        }),
    }
}

/// `sync --dry-run`: steps 1 and 3–6, the plan rendered and stopped.
async fn dry_run(settings: &Settings, opts: &SyncOptions) -> Result<RunSummary, SyncError> {
    let started = Instant::now();
    let Planned {
        mut plan, input, ..
    } = preview(settings, opts, Purpose::DryRun).await?;
    plan.member_names = plan::MemberNames::of(plan.planned(), Some(input.desired()), input.state());
    Ok(RunSummary {
        summary: plan.summary.clone(),
        applied: 0,
        failed: 0,
        skipped: (plan.operations.len() + plan.skipped.len()) as u64,
        skipped_action_off: plan.skipped.len() as u64,
        duration_ms: started.elapsed().as_millis() as u64,
        exit_code: Exit::Ok,
        failures: Vec::new(),
        warnings: plan.warnings.clone(),
        held_groups: plan.held_groups,
        stopped: None,
        dry_run: true,
        dry_run_plan: Some(plan),
        source_objects: Some(source_counts(&input)),
    })
}

/// The state DB's record of what the target requires on a create (see
/// [`required_recorded`]).
const TARGET_REQUIRED: &str = "target_required";

/// Records what the target's schema requires, for `validate`.
fn record_required(db: &StateDb, required: &RequiredPaths) -> Result<(), StateError> {
    let json = serde_json::to_string(required).expect("paths always serialise");
    db.set_meta(TARGET_REQUIRED, Some(&json))
}

/// What the target required on a create when a cycle last read its schema,
/// from the state DB at `path` (read only); `None` when no cycle recorded it.
/// A record that does not parse is ignored: it is advice, not state.
pub fn required_recorded(path: &Path) -> Result<Option<RequiredPaths>, StateError> {
    let Some(db) = StateDb::open_read_only(path)? else {
        return Ok(None);
    };
    Ok(db
        .meta(TARGET_REQUIRED)?
        .and_then(|json| serde_json::from_str(&json).ok()))
}

/// The whole cycle, the state DB opened here: for tests against any target.
#[cfg(test)]
pub async fn cycle<T: Target>(
    settings: &Settings,
    source: &dyn Source,
    target: &T,
    opts: &SyncOptions,
    shutdown: Arc<AtomicBool>,
    progress: &dyn Progress,
) -> Result<RunSummary, SyncError> {
    let mut db = StateDb::open(&settings.state_path)?;
    cycle_on(&mut db, settings, source, target, opts, shutdown, progress).await
}

/// One cycle against any source and target: all the steps, from opening the
/// state DB to recording how the run ended. Nothing is changed when planning
/// or a guard fails. The steps, of which every command runs a prefix:
///
/// 1. open: the state DB, once, by the caller (read-only for `plan` and
///    `--dry-run`), which hands it in;
/// 2. check: the target answers, and what its schema requires is recorded;
/// 3. plan: the source read and mapped, the state loaded, the target read for
///    `--full` — or, for `sync --plan`, the saved plan loaded and verified;
/// 4. only: for `--only`, the plan cut down to the users asked for;
/// 5. guard: the removal guards;
/// 6. lost state: nothing recorded, but a populated target ([`SyncError::NoState`]);
/// 7. apply: the executor;
/// 8. record: how the run ended — `finish` after 7, `stopped` before it,
///    under the one name [`SyncOptions::command`] gives.
///
/// `plan` runs 1 and 3–6 and shows a stop as a warning; `sync --dry-run` runs
/// the same and ends at a stop; `sync`, `--only`, `--full` and the daemon run
/// them all; `sync --plan` skips 4 and 5 (the plan was reviewed as it is).
///
/// A stop before anything was applied is recorded here, for every command alike.
async fn cycle_on<T: Target>(
    db: &mut StateDb,
    settings: &Settings,
    source: &dyn Source,
    target: &T,
    opts: &SyncOptions,
    shutdown: Arc<AtomicBool>,
    progress: &dyn Progress,
) -> Result<RunSummary, SyncError> {
    let started = Instant::now();
    let command = opts.command();
    let ready = match prepare(db, settings, source, target, opts).await {
        Ok(ready) => ready,
        Err(e) => return Err(stopped(db, command, settings.retention(), e)),
    };
    for w in &ready.plan.warnings {
        tracing::warn!("{w}");
    }
    let mut executor = Executor {
        target: target.clone(),
        db: &mut *db,
        state: ready.state,
        create_only: settings.mapping.create_only(),
        concurrency: settings.target.concurrency.slots(),
        shutdown,
        progress,
    };
    let applied = executor.run(command, &ready.plan).await;
    release(executor.state, opts);
    let (outcome, run) = applied.map_err(SyncError::StateWrite)?;
    let plan = ready.plan;
    kill_point("before-mirror-commit");

    // The mirror (and its delta links) is committed only when the whole plan
    // was applied (or was empty): otherwise the next cycle reads the same
    // changes again.
    if let Some(mirror) = &ready.mirror {
        if outcome.failed == 0 && outcome.stopped.is_none() {
            db.save_mirror(&mirror.old, &mirror.new)
                .map_err(SyncError::StateWrite)?;
        } else {
            tracing::info!(
                "the plan was not applied completely; the source's changes are read again next cycle"
            );
        }
    }

    let exit = match &outcome.stopped {
        Some(Stop::Unauthorized(_)) => Exit::Unreachable,
        _ if outcome.failed > 0 || outcome.stopped.is_some() || plan.held_groups > 0 => {
            Exit::Partial
        }
        _ => Exit::Ok,
    };
    let target_failure = match &outcome.stopped {
        Some(stop @ (Stop::Unauthorized(_) | Stop::FailureBudget { .. })) => Some(stop.to_string()),
        _ => None,
    };
    let summary = RunSummary {
        summary: plan.summary.clone(),
        applied: outcome.applied,
        failed: outcome.failed,
        skipped: outcome.skipped,
        skipped_action_off: outcome.action_off,
        duration_ms: started.elapsed().as_millis() as u64,
        exit_code: exit,
        failures: outcome.failures,
        warnings: plan.warnings.clone(),
        held_groups: plan.held_groups,
        stopped: outcome.stopped.as_ref().map(ToString::to_string),
        dry_run: false,
        dry_run_plan: None,
        source_objects: ready.source_objects,
    };
    release(ready.mirror, opts);
    kill_point("before-finish");
    // A plain or full cycle that ran to its end settled what interrupted
    // runs left in flight; `--only` and a saved plan leave it to the next.
    let settles = opts.only.is_empty() && opts.plan_file.is_none() && outcome.stopped.is_none();
    finish(
        db,
        settings,
        run,
        &summary,
        target_failure.as_deref(),
        settles,
    )?;
    Ok(summary)
}

/// Frees `value` now, or leaves it for the exit when the process ends with
/// this cycle (see [`SyncOptions::exits_after`]).
fn release<V>(value: V, opts: &SyncOptions) {
    if opts.exits_after {
        std::mem::forget(value);
    }
}

/// A hook of debug builds for the crash tests: with `IDSYNC_TEST_KILL_AT=POINT`
/// the process kills itself (SIGKILL) when a cycle reaches `POINT`, a moment a
/// signal sent from outside almost never hits. `before-mirror-commit`: every
/// operation committed, an incremental source's mirror and delta links not
/// yet; `before-finish`: those committed, the run not yet closed. Release
/// builds have no hook.
#[cfg(debug_assertions)]
fn kill_point(point: &str) {
    if std::env::var_os("IDSYNC_TEST_KILL_AT").is_some_and(|at| at == point) {
        // SAFETY: raise() only sends a signal to this process.
        unsafe { libc::raise(libc::SIGKILL) };
    }
}

#[cfg(not(debug_assertions))]
fn kill_point(_point: &str) {}

/// Steps 2–6 done for a real sync: what the executor is given.
struct Ready {
    plan: Plan,
    state: State,
    mirror: Option<MirrorUpdate>,
    source_objects: Option<facts::SourceCounts>,
}

/// Steps 2–6 of a real sync: check the target, then plan and check the plan
/// (or load a saved plan and check it for a lost state DB).
async fn prepare<T: Target>(
    db: &mut StateDb,
    settings: &Settings,
    source: &dyn Source,
    target: &T,
    opts: &SyncOptions,
) -> Result<Ready, SyncError> {
    check_target(db, target).await?;
    let Some(path) = &opts.plan_file else {
        let settled = resume::settle_creates(db, target).await?;
        let resumed = resume::resume_options(db, opts, &settled)?;
        let opts = resumed.as_ref().unwrap_or(opts);
        let planned = plan_checked(
            settings,
            source,
            Some(db),
            Some(target),
            target.rules(),
            opts,
            Purpose::Sync,
        )
        .await?;
        return Ok(Ready {
            source_objects: Some(source_counts(&planned.input)),
            plan: planned.plan,
            state: planned.input.into_state(),
            mirror: planned.mirror,
        });
    };
    let (plan, state) = saved_plan(db, settings, path)?;
    if !opts.full
        && let Some(stop) =
            lost_state(settings, &state, Some(db), Some(target), Purpose::Sync).await?
    {
        return Err(stop);
    }
    Ok(Ready {
        plan,
        state,
        mirror: None,
        source_objects: None,
    })
}

/// Step 2: the target answers (a failure counts towards the quarantine, as
/// [`stopped`] records it), and what its schema requires is recorded for
/// `validate`.
async fn check_target<T: Target>(db: &StateDb, target: &T) -> Result<(), SyncError> {
    target.check().await.map_err(SyncError::Target)?;
    if let Some(required) = target.required_paths() {
        record_required(db, &required).map_err(SyncError::StateWrite)?;
    }
    Ok(())
}

/// Step 8 for a cycle that stopped before anything was applied: the stop is
/// recorded under `command`, so `status` shows it, and `e` is handed back. A
/// source or target that could not be reached or read (exit 5) counts toward
/// the quarantine. A failure to record either is logged, not returned: the
/// operator needs to know why the cycle stopped more than that the history
/// missed it.
fn stopped(db: &mut StateDb, command: &str, keep: Retention, e: SyncError) -> SyncError {
    // A guard stop is recorded as the stop itself: "nothing was changed" goes
    // without saying in the history.
    let reason = match &e {
        SyncError::Guard { stop, .. } => stop.to_string(),
        e => e.to_string(),
    };
    if let Err(record) = db.record_stopped_run(command, e.exit(), &reason, keep) {
        tracing::warn!(
            error = %record,
            stopped = %reason,
            "could not record the stopped run in the state DB's history"
        );
    }
    if e.exit() == Exit::Unreachable
        && let Err(record) = quarantine::record(db, Some(&reason), chrono::Utc::now())
    {
        tracing::warn!(error = %record, "could not record the failure for the quarantine");
    }
    e
}

/// Step 8 for a run the executor ran: its end in the history, and the
/// target's quarantine cleared or counted on.
fn finish(
    db: &mut StateDb,
    settings: &Settings,
    run: i64,
    summary: &RunSummary,
    target_failure: Option<&str>,
    settles_interrupted: bool,
) -> Result<(), SyncError> {
    let summary_json = serde_json::to_string(&summary.summary).unwrap_or_default();
    db.finish_run(
        run,
        &RunEnd {
            applied: summary.applied as i64,
            failed: summary.failed as i64,
            exit_code: summary.exit_code,
            summary: &summary_json,
            error: summary.stopped.as_deref(),
            settles_interrupted,
        },
        settings.retention(),
    )?;
    quarantine::record(db, target_failure, chrono::Utc::now())?;
    Ok(())
}

/// Users and groups in scope in the source, as the planning input holds them.
fn source_counts(input: &PlanningInput) -> facts::SourceCounts {
    let desired = input.desired();
    facts::SourceCounts {
        users: desired.users.len() as u64,
        groups: desired.groups.len() as u64,
    }
}

/// Step 3 for `sync --plan`: the saved plan, loaded and checked against the
/// state it was made from, with that state.
fn saved_plan(
    db: &mut StateDb,
    settings: &Settings,
    path: &Path,
) -> Result<(Plan, State), SyncError> {
    let plan = load_saved_plan(path)?;
    let state = state_for_saved_plan(db, &plan)?;
    let expected = plan::fingerprint(
        &settings.fingerprint,
        state.generation,
        false,
        &plan.operations,
        &plan.skipped,
    );
    if plan.full || plan.fingerprint != expected {
        return Err(SyncError::StalePlan {
            path: path.to_path_buf(),
        });
    }
    // The fingerprint can be recomputed by anyone who reads the config: the
    // operations themselves must name what the state records.
    plan::verify_saved(&plan, &state).map_err(|mismatch| SyncError::PlanMismatch {
        path: path.to_path_buf(),
        mismatch,
    })?;
    Ok((plan, state))
}

/// The state a saved plan is applied to: loaded, with the pushed attributes of
/// every user the plan updates (their new record is the old one plus the
/// plan's changes).
fn state_for_saved_plan(db: &mut StateDb, plan: &Plan) -> Result<State, SyncError> {
    let mut state = db.load()?;
    let keys: Vec<SourceKey> = plan
        .operations
        .iter()
        .filter_map(|op| match op {
            Operation::UpdateUser { key, .. } | Operation::EnableUser { key, .. } => {
                Some(key.clone())
            }
            _ => None,
        })
        .collect();
    db.load_attrs(&mut state, keys.iter())?;
    Ok(state)
}

fn load_saved_plan(path: &Path) -> Result<Plan, SyncError> {
    let text = std::fs::read_to_string(path).map_err(|e| SyncError::PlanUnreadable {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| SyncError::NotAPlan {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
