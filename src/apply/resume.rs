//! Resuming after a run that was killed: creates it had started may have
//! happened on the target, so they are looked up before being sent again.

use std::collections::HashSet;

use crate::model::OpKind;
use crate::plan::Operation;
use crate::state::JournalEntry;

/// Operations of an interrupted run that were started but never committed.
#[derive(Debug, Default)]
pub struct Interrupted(HashSet<(OpKind, String)>);

impl Interrupted {
    /// From the journal's unfinished entries (names it does not know are
    /// ignored: they can only be from another version, and were never creates
    /// this one can resume).
    pub fn from_journal(entries: Vec<JournalEntry>) -> Interrupted {
        Interrupted(entries.into_iter().map(|e| (e.op, e.subject)).collect())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `op` was started by the interrupted run.
    pub fn contains(&self, op: &Operation) -> bool {
        !self.0.is_empty() && self.0.contains(&(op.kind(), op.subject().to_string()))
    }
}
