//! `idsync audit`: reads the target (every page, through the configured rate
//! limit, nothing written) and the source, plans what `sync --full` would do,
//! and hands all of it to the pure [`plan::audit::audit`]. The state DB is
//! opened read-only (and not created); no lock is taken, since nothing is
//! written.

use serde::Serialize;

use crate::apply::Target;
use crate::config::Settings;
use crate::model::{GroupKey, OpKind, SourceKey, TargetSnapshot};
use crate::plan::audit::{Audit, AuditInput, FailedOps};
use crate::plan::{self, guard};
use crate::state::{StateDb, StateError};

use super::SyncError;

/// Failed operations read from the last run that had failures.
const FAILURES_READ: usize = 10_000;

/// What `audit` shows: the findings, and what was audited when.
#[derive(Clone, Debug, Serialize)]
pub struct AuditReport {
    /// When the audit was made (RFC 3339).
    pub generated_at: String,
    /// The target's base URL.
    pub target: String,
    /// Nothing found (what `policy.protect` names aside): the exit code is 0.
    pub clean: bool,
    /// How many findings there are (see [`Audit::findings`]).
    pub findings: usize,
    #[serde(flatten)]
    pub audit: Audit,
}

/// Audits the configured target against the configured source.
pub async fn audit(settings: &Settings) -> Result<AuditReport, SyncError> {
    let client = super::client(settings)?;
    Target::check(&client).await.map_err(SyncError::Target)?;
    let mut db = StateDb::open_read_only(&settings.state_path)?;
    // Accounts a killed run created are idsync's, as the next sync records.
    let settled = match db.as_mut() {
        Some(db) => super::resume::find_started_creates(db, &client).await?.0,
        None => Vec::new(),
    };
    let (input, _mirror) = super::planning_input(
        settings,
        settings.source.adapter(),
        db.as_mut(),
        Some(&client),
        true,
        client.rules(),
        &settled,
    )
    .await?;
    // What the mapping warns of (a misspelt `assign.users` entry), as a sync
    // logs it.
    for w in &input.desired().warnings {
        tracing::warn!("{w}");
    }
    let plan = plan::plan(&input);
    let stop = guard::check(&plan, &settings.policy, false).err();
    let failed = match &db {
        Some(db) => failed_ops(db)?,
        None => FailedOps::default(),
    };
    let nothing = TargetSnapshot::default();
    let audit = plan::audit::audit(&AuditInput {
        desired: input.desired(),
        state: input.state(),
        target: input.target().unwrap_or(&nothing),
        policy: &settings.policy,
        plan: &plan,
        guard: stop.as_ref(),
        failed: &failed,
    });
    Ok(AuditReport {
        generated_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        target: settings.target.base_url.to_string(),
        clean: audit.is_clean(),
        findings: audit.findings(),
        audit,
    })
}

/// The user removals and membership removals that failed in the last run
/// that had failures, each with its error.
fn failed_ops(db: &StateDb) -> Result<FailedOps, StateError> {
    let mut failed = FailedOps::default();
    for f in db.recent_failures(FAILURES_READ)? {
        let mut error = format!("run {}", f.run_id);
        if let Some(status) = f.http_status {
            error.push_str(&format!(", HTTP {status}"));
        }
        if let Some(detail) = &f.error {
            error.push_str(&format!(": {detail}"));
        }
        match f.op {
            OpKind::DisableUser | OpKind::DeleteUser => {
                failed.users.insert(SourceKey::new(f.subject), error);
            }
            OpKind::RemoveMembers => {
                failed.groups.insert(GroupKey::new(f.subject), error);
            }
            _ => {}
        }
    }
    Ok(failed)
}
