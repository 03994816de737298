//! Resuming after a run that was killed (SIGKILL, a crash, the machine going
//! down) with requests in flight: what they did to the target is unknown to
//! the state DB, and the source may have changed since. Before the next plain
//! cycle plans, this settles it:
//!
//! - a create it had started is looked up by the name it sent (the journal
//!   keeps it): an account or group found there, that no other key's record
//!   holds, is recorded as idsync's own — so a joiner who left, or was
//!   renamed, before the resume has that account removed or renamed, not
//!   left behind;
//! - when any other operation was in flight (an update, an enable or
//!   disable, a delete, a group or membership change), or a create was
//!   settled, the cycle reads the target first as `sync --full` does, and
//!   plans from what the target holds (the source is read as usual: an
//!   incremental source goes on from its delta links).
//!
//! The journal entries stay until a cycle that settled them runs to its end
//! (see [`crate::state::RunEnd::settles_interrupted`]).

use std::collections::BTreeSet;

use crate::apply::Target;
use crate::model::{
    AttrHash, GroupKey, GroupName, OpKind, Ownership, SourceKey, StateChange, StateGroup,
    StateUser, Status, UserName,
};
use crate::state::{JournalEntry, StateDb};

use super::{SyncError, SyncOptions};

/// What [`settle_creates`] recorded as idsync's own.
#[derive(Debug, Default)]
pub(super) struct Settled {
    pub users: usize,
    pub groups: usize,
}

/// Looks up, by the name it sent, each create an interrupted run started and
/// never committed, and records what it finds as idsync's own (created by
/// it), unless the state records that SCIM id for another key. Nothing is
/// sent but lookups; nothing is recorded when none is found.
pub(super) async fn settle_creates<T: Target>(
    db: &mut StateDb,
    target: &T,
) -> Result<Settled, SyncError> {
    let (changes, settled) = find_started_creates(db, target).await?;
    if !changes.is_empty() {
        tracing::warn!(
            users = settled.users,
            groups = settled.groups,
            "a previous run was interrupted while creating these; found in the target, they are recorded as idsync's own"
        );
        db.commit_changes(&changes)?;
    }
    Ok(settled)
}

/// What [`settle_creates`] would record, found and not recorded: `plan` and
/// `sync --dry-run` apply it to the state in memory.
pub(super) async fn find_started_creates<T: Target>(
    db: &mut StateDb,
    target: &T,
) -> Result<(Vec<StateChange>, Settled), SyncError> {
    let started: Vec<JournalEntry> = db
        .interrupted_ops()?
        .into_iter()
        .filter(|e| matches!(e.op, OpKind::CreateUser | OpKind::CreateGroup) && e.name.is_some())
        .collect();
    let mut settled = Settled::default();
    if started.is_empty() {
        return Ok((Vec::new(), settled));
    }
    let state = db.load()?;
    let mut changes = Vec::new();
    for entry in started {
        let name = entry.name.unwrap_or_default();
        if entry.op == OpKind::CreateUser {
            let key = SourceKey::new(entry.subject.as_str());
            if state.live_user(&key).is_some() {
                continue;
            }
            let found = target
                .find_user(&UserName::new(name.as_str()))
                .await
                .map_err(SyncError::Target)?;
            let Some(remote) = found.filter(|r| state.owner_of(&r.id, &key).is_none()) else {
                continue;
            };
            let user_name = remote
                .user_name()
                .unwrap_or_else(|| UserName::new(name.as_str()));
            changes.push(StateChange::PutUser {
                key,
                user: StateUser {
                    scim_id: remote.id.into(),
                    user_name,
                    hash: AttrHash::of(&remote.attrs, &BTreeSet::new()),
                    status: if remote.active {
                        Status::Active
                    } else {
                        Status::Disabled
                    },
                    ownership: Ownership::Created,
                    attrs: Some(Box::new(remote.attrs)),
                },
            });
            settled.users += 1;
        } else {
            let key = GroupKey::new(entry.subject.as_str());
            if state.live_group(&key).is_some() {
                continue;
            }
            let found = target
                .find_group(&GroupName::new(name.as_str()))
                .await
                .map_err(SyncError::Target)?;
            let held_by_another = |id: &crate::model::ScimId| {
                state
                    .groups
                    .iter()
                    .any(|(k, g)| *k != key && g.scim_id == *id)
            };
            let Some(remote) = found.filter(|g| !held_by_another(&g.id)) else {
                continue;
            };
            changes.push(StateChange::PutGroup {
                key,
                group: StateGroup {
                    scim_id: remote.id,
                    display_name: remote.display_name,
                    status: Status::Active,
                    ownership: Ownership::Created,
                },
            });
            settled.groups += 1;
        }
    }
    Ok((changes, settled))
}

/// The options of a plain cycle after a run that was killed with operations
/// in flight other than creates (a create is looked up by name before it is
/// sent again), or after [`settle_creates`] recorded something: that cycle
/// reads the target first, as `sync --full` does, so it plans from what the
/// target holds (the attributes and memberships of what was settled
/// included). `None`: plan as asked. `--full` does so anyway; `--only` is
/// left as asked, and the next plain cycle does it.
pub(super) fn resume_options(
    db: &StateDb,
    opts: &SyncOptions,
    settled: &Settled,
) -> Result<Option<SyncOptions>, SyncError> {
    if opts.full || opts.settle || !opts.only.is_empty() || opts.plan_file.is_some() {
        return Ok(None);
    }
    let in_flight = db
        .interrupted_ops()?
        .into_iter()
        .filter(|e| !matches!(e.op, OpKind::CreateUser | OpKind::CreateGroup))
        .count();
    if in_flight == 0 && settled.users == 0 && settled.groups == 0 {
        return Ok(None);
    }
    tracing::warn!(
        operations = in_flight,
        settled_users = settled.users,
        settled_groups = settled.groups,
        "a previous run was interrupted with changes in flight that may or may not have reached the target; the target is read first, as `sync --full` does"
    );
    Ok(Some(SyncOptions {
        settle: true,
        ..opts.clone()
    }))
}
