//! `idsync revert RUN`: reads what run RUN did from the run history (each
//! applied operation is recorded with the values it changed; see the state
//! schema's migration 5) and the state as it is now, and has the planner make
//! the plan that undoes it ([`plan::revert`]).

use crate::config::Settings;
use crate::plan::{self, Destroyed, Operation, Plan, RevertedRun, Undo};
use crate::state::StateDb;

use super::SyncError;

/// The revert plan of run `id`, made against the current state.
pub fn revert(settings: &Settings, id: i64) -> Result<Plan, SyncError> {
    let cannot = |reason: &str| SyncError::CannotRevert {
        run: id,
        reason: reason.to_string(),
    };
    let mut db = StateDb::open_read_only(&settings.state_path)?
        .ok_or_else(|| cannot("there is no state DB"))?;
    let run = db
        .run(id)?
        .ok_or_else(|| cannot("it is not in the run history (kept for history_days)"))?;
    if !db.records_values()? {
        return Err(cannot(
            "the state DB was written by an idsync that did not record the values each operation changed; run any sync once to upgrade it (runs before that cannot be reverted)",
        ));
    }
    let applied = db.applied_ops(id)?;
    let mut undo = Undo::default();
    for op in applied.iter().rev() {
        let Some(json) = &op.new_values else {
            return Err(cannot(&format!(
                "its operation {} {:?} was recorded without its values (before this idsync kept them)",
                op.op, op.subject
            )));
        };
        let operation: Operation = serde_json::from_str(json).map_err(|e| {
            cannot(&format!(
                "its operation {} {:?} cannot be read back: {e}",
                op.op, op.subject
            ))
        })?;
        let destroyed: Destroyed = match &op.old_values {
            Some(json) => serde_json::from_str(json).map_err(|e| {
                cannot(&format!(
                    "the old values of {} {:?} cannot be read back: {e}",
                    op.op, op.subject
                ))
            })?,
            None => Destroyed::default(),
        };
        undo.fold(operation, destroyed);
    }
    let mut state = db.load()?;
    db.load_attrs(&mut state, undo.restored_users())?;
    let reverted = RevertedRun {
        id: run.id,
        command: &run.command,
        started_at: &run.started_at,
    };
    Ok(plan::revert(
        &undo,
        &reverted,
        &state,
        &settings.policy,
        &settings.fingerprint,
    ))
}
