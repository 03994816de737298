//! How a target holds values, as its schema says: what the planner compares
//! ignoring case, what it does not compare, what cannot change. Read by the
//! SCIM client from `/Schemas`, used by the planner and the executor.

use std::collections::BTreeSet;

use super::UserAttr;

/// What the target's schema says about comparing its values with idsync's,
/// reduced to what the planner needs. Empty (compare everything exactly) when
/// the target was not asked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetRules {
    /// Attributes the target compares ignoring case (`caseExact` false): a
    /// value it holds that differs from the wanted one only in case is the
    /// wanted one (a server that lower-cases email domains is not drift).
    pub folded: BTreeSet<UserAttr>,
    /// Attributes the target does not hold as written (read-only, write-only,
    /// never returned): never planned as changes, never compared with what the
    /// target holds.
    pub unheld: BTreeSet<UserAttr>,
    /// Attributes the target does not let change once set (`immutable`). An
    /// adopted account's case-only difference there is left as it is.
    pub fixed: BTreeSet<UserAttr>,
}

impl TargetRules {
    /// Whether the target holding `held` for `attr` holds `wanted`.
    pub fn holds(&self, attr: UserAttr, held: Option<&str>, wanted: &str) -> bool {
        match held {
            Some(h) if self.folded.contains(&attr) => h.to_lowercase() == wanted.to_lowercase(),
            Some(h) => h == wanted,
            None => false,
        }
    }

    /// Whether an account adopted now, holding `held`, already holds
    /// `wanted`: compared exactly, so the account is brought in line once,
    /// case included — except where the target cannot change the attribute
    /// (an immutable userName would refuse the change every cycle).
    pub fn adopted_holds(&self, attr: UserAttr, held: Option<&str>, wanted: &str) -> bool {
        if self.fixed.contains(&attr) {
            self.holds(attr, held, wanted)
        } else {
            held.is_some_and(|h| h == wanted)
        }
    }
}
