//! What `status` and `explain` show, gathered as plain data for `report` to
//! render. Reads only: the state DB is opened read-only.

use std::path::PathBuf;

use serde::Serialize;

use crate::config::Settings;
use crate::model::{
    Email, NoteSummary, Ownership, ScimId, SourceAttrs, SourceKey, State, Status, UserAttrs,
    UserName,
};
use crate::plan::{self, Operation, PlanningInput, RemoveAction};
use crate::state::{FailureRecord, LockHolder, OpLine, RunPoint, RunRecord, StateDb};

use super::SyncError;
use super::quarantine::{self, Quarantine};

/// Runs and failures `status` lists.
const STATUS_RUNS: usize = 10;
const STATUS_FAILURES: usize = 20;
/// Log lines `explain` lists for one user.
const EXPLAIN_HISTORY: usize = 10;

/// `idsync status`.
#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    pub state: PathBuf,
    /// `paused: true`: sync and daemon cycles are skipped (exit 6).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// False when no state DB exists yet (no run has happened).
    #[serde(skip)]
    pub exists: bool,
    pub managed_users: usize,
    pub active_users: usize,
    pub disabled_users: usize,
    pub removed_users: usize,
    pub managed_groups: usize,
    pub runs: Vec<RunRecord>,
    pub failures: Vec<FailureRecord>,
    pub interrupted_operations: usize,
    pub quarantine: Option<Quarantine>,
    /// The run holding the state DB's lock right now, if any: its unfinished
    /// run and journal are in progress, not interrupted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<LockHolder>,
    /// For a source with a mirror (Entra ID): what the mirror holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorStatus>,
    /// Values the target did not keep as sent, per attribute.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub target_notes: Vec<NoteSummary>,
}

/// The committed mirror of an incremental source.
#[derive(Clone, Debug, Serialize)]
pub struct MirrorStatus {
    pub users: usize,
    pub groups: usize,
    /// True when delta links are committed (the next cycle is incremental
    /// unless a full round is due).
    pub delta_links: bool,
    /// When the last committed full round started (RFC 3339).
    pub last_full_round: Option<String>,
}

pub fn status(settings: &Settings) -> Result<StatusReport, SyncError> {
    let mut report = StatusReport {
        state: settings.state_path.clone(),
        paused: settings.paused,
        exists: false,
        managed_users: 0,
        active_users: 0,
        disabled_users: 0,
        removed_users: 0,
        managed_groups: 0,
        runs: Vec::new(),
        failures: Vec::new(),
        interrupted_operations: 0,
        quarantine: None,
        running: None,
        mirror: None,
        target_notes: Vec::new(),
    };
    let Some(mut db) = StateDb::open_read_only(&settings.state_path)? else {
        return Ok(report);
    };
    let state = db.load()?;
    let users = |s: Status| state.users.values().filter(|u| u.status == s).count();
    report.exists = true;
    report.managed_users = state.managed_users();
    report.active_users = users(Status::Active);
    report.disabled_users = users(Status::Disabled);
    report.removed_users = users(Status::Removed);
    report.managed_groups = state
        .groups
        .values()
        .filter(|g| g.status != Status::Removed)
        .count();
    report.runs = db.recent_runs(STATUS_RUNS)?;
    report.failures = db.recent_failures(STATUS_FAILURES)?;
    report.interrupted_operations = db.interrupted_ops()?.len();
    report.quarantine = Some(quarantine::load(&db)?);
    report.target_notes = db.note_summaries()?;
    report.running = StateDb::lock_holder(&settings.state_path)?;
    if settings.source.adapter().mirrored().is_some() {
        let mirror = db.load_mirror()?;
        report.mirror = Some(MirrorStatus {
            users: mirror.users.len(),
            groups: mirror.groups.len(),
            delta_links: mirror.has_links(),
            last_full_round: mirror
                .full_at
                .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        });
    }
    Ok(report)
}

/// What the next cycle would send for `key`: the whole plan made from this
/// read, cut down to the user (as `sync --only` does). A source that cannot be
/// mapped plans nothing, and that is the answer.
fn next_operations(
    settings: &Settings,
    dir: crate::model::SourceDirectory,
    state: &State,
    db: Option<&StateDb>,
    key: &SourceKey,
) -> Result<Vec<Operation>, String> {
    let desired = settings.mapping.build(dir).map_err(|errors| {
        format!(
            "{} source record(s) cannot be mapped, so no cycle can be planned (see `idsync plan`)",
            errors.len()
        )
    })?;
    let input = PlanningInput::new(
        desired,
        state.clone(),
        None,
        settings.plan_options(),
        |state: &mut State, keys: &[SourceKey]| match db {
            Some(db) => db.load_attrs(state, keys.iter()),
            None => Ok(()),
        },
    )
    .map_err(|e| e.to_string())?;
    let plan = plan::plan(&input);
    let only = std::collections::BTreeSet::from([key.clone()]);
    Ok(super::only::restrict(plan, &only, &settings.fingerprint, state.generation).operations)
}

/// `idsync report --html`: the run history over a period, the last run's
/// operations, and the quarantine and guards now.
#[derive(Clone, Debug, Serialize)]
pub struct ReportData {
    /// When the report was made (RFC 3339).
    pub generated_at: String,
    /// The start of the period shown (RFC 3339).
    pub since: String,
    pub managed_users: usize,
    pub managed_groups: usize,
    /// Runs in the period, oldest first.
    pub runs: Vec<RunPoint>,
    /// The newest run that had operations, and its log.
    pub last_run: Option<RunPoint>,
    pub last_run_ops: Vec<OpLine>,
    pub quarantine: Option<Quarantine>,
    /// The removal guards as configured.
    pub max_removals: String,
    pub max_member_removals: String,
    /// The newest run in the period, when a guard stopped it (exit 3): why.
    pub guard_stop: Option<String>,
}

pub fn report(settings: &Settings, since: std::time::Duration) -> Result<ReportData, SyncError> {
    let now = chrono::Utc::now();
    let since = now - chrono::Duration::from_std(since).unwrap_or(chrono::Duration::MAX);
    let since = since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut data = ReportData {
        generated_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        since: since.clone(),
        managed_users: 0,
        managed_groups: 0,
        runs: Vec::new(),
        last_run: None,
        last_run_ops: Vec::new(),
        quarantine: None,
        max_removals: settings.policy.max_removals.to_string(),
        max_member_removals: settings.policy.max_member_removals.to_string(),
        guard_stop: None,
    };
    let Some(mut db) = StateDb::open_read_only(&settings.state_path)? else {
        return Ok(data);
    };
    let state = db.load()?;
    data.managed_users = state.managed_users();
    data.managed_groups = state
        .groups
        .values()
        .filter(|g| g.status != Status::Removed)
        .count();
    data.runs = db.runs_since(&since)?;
    data.last_run = data.runs.iter().rev().find(|r| r.planned > 0).cloned();
    if let Some(run) = &data.last_run {
        data.last_run_ops = db.run_log(run.id)?;
    }
    data.guard_stop = data
        .runs
        .last()
        .filter(|r| r.exit_code == Some(super::Exit::Guard))
        .and_then(|r| r.error.clone());
    data.quarantine = Some(quarantine::load(&db)?);
    Ok(data)
}

/// `idsync explain USER`: the user's path through source, mapping and target.
#[derive(Clone, Debug)]
pub struct Explanation {
    /// What the operator asked about.
    pub asked: String,
    /// The configured source, described.
    pub source: String,
    pub remove_action: RemoveAction,
    pub found: Found,
    /// The groups the source has the user in (display names).
    pub source_groups: Vec<String>,
    /// The groups idsync pushed the user into (display names).
    pub target_groups: Vec<String>,
    /// Exactly what the next cycle would send for this user (its own
    /// operations and its memberships), or why no cycle could be planned.
    pub next: Result<Vec<Operation>, String>,
}

#[derive(Clone, Debug)]
pub enum Found {
    /// Not in the source; the state may still know the user.
    NotInSource {
        known: Option<KnownUser>,
    },
    InSource(Box<ExplainedUser>),
}

/// A user the state DB knows.
#[derive(Clone, Debug)]
pub struct KnownUser {
    pub key: SourceKey,
    pub scim_id: ScimId,
    pub status: Status,
}

#[derive(Clone, Debug)]
pub struct ExplainedUser {
    pub key: SourceKey,
    pub origin: String,
    /// The record's attributes as the source spells them.
    pub attrs: Vec<(String, Vec<String>)>,
    /// Which scope rule puts the record in or out of scope.
    pub scope: String,
    pub mapping: Mapped,
    pub target: Option<Provisioned>,
}

/// What the mapping made of the record.
#[derive(Clone, Debug)]
pub enum Mapped {
    Error(String),
    OutOfScope,
    InScope { active: bool, attrs: UserAttrs },
}

/// The user in the target, as last pushed.
#[derive(Clone, Debug)]
pub struct Provisioned {
    pub scim_id: ScimId,
    pub status: Status,
    pub ownership: Ownership,
    pub attrs: Option<UserAttrs>,
    pub history: Vec<FailureRecord>,
}

pub async fn explain(settings: &Settings, who: &str) -> Result<Explanation, SyncError> {
    let source = settings.source.adapter();
    let mut db = StateDb::open_read_only(&settings.state_path)?;
    let attributes = settings.mapping.source_attributes();
    // A source with a mirror continues from it (the updated mirror is dropped:
    // `explain` writes nothing).
    let dir = if let Some(mirrored) = source.mirrored() {
        let mirror = match db.as_mut() {
            Some(db) => db.load_mirror()?,
            None => Default::default(),
        };
        let (mirror, assignments) = mirrored.update(&attributes, mirror).await?;
        crate::source::read_whole(mirrored.directory(&mirror), assignments).await?
    } else {
        source.read(&attributes).await?
    };
    let wanted = Email::new(who);
    let record = dir.users.iter().find(|u| {
        u.key.as_str() == who
            || u.attrs
                .iter()
                .any(|(_, v)| v.contains('@') && Email::new(v) == wanted)
    });
    let state = match db.as_mut() {
        Some(db) => db.load()?,
        None => State::default(),
    };
    let subject = record.map(|r| r.key.clone()).or_else(|| {
        let wanted = UserName::new(who);
        state
            .users
            .iter()
            .find(|(k, u)| k.as_str() == who || u.user_name == wanted)
            .map(|(k, _)| k.clone())
    });
    let source_groups = match &subject {
        Some(key) => dir
            .groups
            .iter()
            .filter(|g| g.members.contains(key))
            .map(|g| g.name.to_string())
            .collect(),
        None => Vec::new(),
    };
    let target_groups = match &subject {
        Some(key) => state
            .memberships
            .iter()
            .filter(|(_, members)| members.contains(key))
            .filter_map(|(g, _)| state.live_group(g))
            .map(|g| g.display_name.to_string())
            .collect(),
        None => Vec::new(),
    };
    let next = match &subject {
        Some(key) => next_operations(settings, dir.clone(), &state, db.as_ref(), key),
        None => Ok(Vec::new()),
    };
    let mut explanation = Explanation {
        asked: who.to_string(),
        source: source.describe(),
        remove_action: settings.policy.remove_action,
        found: Found::NotInSource { known: None },
        source_groups,
        target_groups,
        next,
    };
    let Some(record) = record else {
        let wanted = UserName::new(who);
        let known = state
            .users
            .iter()
            .find(|(k, u)| k.as_str() == who || u.user_name == wanted)
            .map(|(key, u)| KnownUser {
                key: key.clone(),
                scim_id: u.scim_id.to_scim_id(),
                status: u.status,
            });
        explanation.found = Found::NotInSource { known };
        return Ok(explanation);
    };
    let scope = settings.mapping.scope_verdict(record, &dir);
    let mapping = match settings.mapping.map_user(record, &dir) {
        Err(e) => Mapped::Error(e.to_string()),
        Ok(None) => Mapped::OutOfScope,
        Ok(Some(user)) => Mapped::InScope {
            active: user.active,
            attrs: user.attrs,
        },
    };
    let target = match (state.users.get(&record.key), db.as_ref()) {
        (Some(u), Some(db)) => Some(Provisioned {
            scim_id: u.scim_id.to_scim_id(),
            status: u.status,
            ownership: u.ownership,
            attrs: db.user_attrs(&record.key)?,
            history: db.history_of(record.key.as_str(), EXPLAIN_HISTORY)?,
        }),
        _ => None,
    };
    explanation.found = Found::InSource(Box::new(ExplainedUser {
        key: record.key.clone(),
        origin: record.origin.to_string(),
        attrs: grouped(&record.attrs),
        scope,
        mapping,
        target,
    }));
    Ok(explanation)
}

/// The provisioning log `filter` selects, oldest first; empty without a state DB.
pub fn log(
    settings: &Settings,
    filter: &crate::state::LogFilter,
) -> Result<Vec<crate::state::LogRecord>, SyncError> {
    match StateDb::open_read_only(&settings.state_path)? {
        Some(db) => Ok(db.op_log(filter)?),
        None => Ok(Vec::new()),
    }
}

/// A record's values grouped under their names, in the order the names came.
fn grouped(attrs: &SourceAttrs) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (name, value) in attrs.iter() {
        match out.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some((_, values)) => values.push(value.to_owned()),
            None => out.push((name.to_owned(), vec![value.to_owned()])),
        }
    }
    out
}
