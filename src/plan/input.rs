//! The planner's one input, gathered in one place before planning starts: the
//! desired snapshot, the last pushed state with the attributes the planner will
//! compare already loaded, for `--full` what the target holds, and the options.

use crate::model::{
    AttrHash, Desired, DesiredUser, NoteSummary, SourceKey, State, Status, TargetRules,
    TargetSnapshot,
};

use super::Policy;

/// What a plan is made under, besides the data.
#[derive(Clone, Debug)]
pub struct PlanOptions {
    pub policy: Policy,
    /// Changes whenever the config or the mapping changes; with the state's
    /// generation it ties a saved plan to what it was made from.
    pub config_fingerprint: String,
    /// Warn before the directory grows past this many managed users.
    pub user_limit: Option<u64>,
    /// How the target holds values, from its schema (empty when unknown).
    pub target_rules: TargetRules,
    /// Values the target did not keep as sent, per attribute (from the state
    /// DB): a plan that does not read the target says so rather than imply the
    /// target holds what was sent.
    pub notes: Vec<NoteSummary>,
}

/// Everything the planner needs. Built only by [`PlanningInput::new`], which
/// loads the pushed attributes the planner compares, so no caller can forget to.
#[derive(Clone, Debug)]
pub struct PlanningInput {
    pub(super) desired: Desired,
    pub(super) state: State,
    pub(super) target: Option<TargetSnapshot>,
    pub(super) options: PlanOptions,
}

impl PlanningInput {
    /// Gathers the input. `load_attrs` fills in the last pushed attributes of the
    /// given users (the state DB's `load_attrs`): those whose desired attributes
    /// hash differently from what was pushed, or, for `--full` (`target` given),
    /// every managed user. A user the loader leaves without attributes is
    /// compared against none, so every desired value is sent again: a wasted
    /// request at worst, never a skipped update.
    pub fn new<E>(
        desired: Desired,
        mut state: State,
        target: Option<TargetSnapshot>,
        options: PlanOptions,
        load_attrs: impl FnOnce(&mut State, &[SourceKey]) -> Result<(), E>,
    ) -> Result<PlanningInput, E> {
        let keys = if target.is_some() {
            state
                .users
                .iter()
                .filter(|(_, u)| u.status != Status::Removed && u.attrs.is_none())
                .map(|(k, _)| k.clone())
                .collect()
        } else {
            keys_needing_attrs(&desired, &state, SLICE_MIN)
        };
        if !keys.is_empty() {
            load_attrs(&mut state, &keys)?;
            for key in &keys {
                if let Some(user) = state.users.get_mut(key) {
                    user.attrs.get_or_insert_with(Default::default);
                }
            }
        }
        Ok(PlanningInput {
            desired,
            state,
            target,
            options,
        })
    }

    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// The state as loaded (before any `--full` reconcile).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// What a `--full` read found in the target.
    pub fn target(&self) -> Option<&TargetSnapshot> {
        self.target.as_ref()
    }

    pub fn is_full(&self) -> bool {
        self.target.is_some()
    }

    pub fn policy(&self) -> &Policy {
        &self.options.policy
    }

    /// Gives the state back (for the executor to start from).
    pub fn into_state(self) -> State {
        self.state
    }
}

/// The fewest users worth a thread of their own when hashing.
const SLICE_MIN: usize = 50_000;

/// Users whose pushed attributes the planner must compare: those whose desired
/// attributes hash differently from what was pushed. A large directory is
/// hashed in slices on every core (a million users take most of a second on
/// one); the keys come back in the desired order either way.
fn keys_needing_attrs(desired: &Desired, state: &State, slice_min: usize) -> Vec<SourceKey> {
    let changed = |users: &[DesiredUser]| -> Vec<SourceKey> {
        // In key order, so a state recorded in key order is walked.
        let mut records = state.user_cursor();
        users
            .iter()
            .filter(|d| match records.find(&d.key) {
                Some((_, s)) if s.status != Status::Removed && s.attrs.is_none() => {
                    s.hash != AttrHash::of(&d.attrs, &desired.create_only)
                }
                _ => false,
            })
            .map(|d| d.key.clone())
            .collect()
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let slices = cores.min(desired.users.len() / slice_min).max(1);
    if slices == 1 {
        return changed(&desired.users);
    }
    let slice_len = desired.users.len().div_ceil(slices);
    std::thread::scope(|scope| {
        let workers: Vec<_> = desired
            .users
            .chunks(slice_len)
            .map(|users| scope.spawn(move || changed(users)))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testkit::{desired, person, state_of};

    #[test]
    fn keys_needing_attrs_hashed_in_slices_are_the_changed_users_in_desired_order() {
        let before: Vec<DesiredUser> = (0..40)
            .map(|i| {
                person(
                    &format!("u{i:02}"),
                    &format!("u{i}@example.com"),
                    "Engineer",
                )
            })
            .collect();
        let mut state = state_of(
            &before
                .iter()
                .map(|d| (d, Status::Active))
                .collect::<Vec<_>>(),
        );
        for user in state.users.values_mut() {
            user.attrs = None;
        }
        let mut now = before.clone();
        for i in [1, 7, 19, 20, 33, 39] {
            now[i] = person(
                &format!("u{i:02}"),
                &format!("u{i}@example.com"),
                "Designer",
            );
        }
        let now = desired(now, Vec::new());
        let expected: Vec<SourceKey> = [1, 7, 19, 20, 33, 39]
            .iter()
            .map(|i| SourceKey::new(format!("u{i:02}")))
            .collect();
        // One slice, and as many slices as the machine has cores.
        assert_eq!(keys_needing_attrs(&now, &state, usize::MAX), expected);
        assert_eq!(keys_needing_attrs(&now, &state, 1), expected);
    }
}
