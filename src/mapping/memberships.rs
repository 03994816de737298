//! Group memberships as `member_of` scope clauses see them: each clause's
//! groups resolved against one source read into the set of their members.
//! Its own module because both the expressions' record (which carries them)
//! and the scope rules (which test them) need it.

use std::collections::HashSet;

use crate::model::{FastHash, GroupName, SourceGroup};

/// The members of each `member_of` clause's groups, resolved against one source
/// read: one set of user keys per clause, in slot order.
#[derive(Debug, Default)]
pub(crate) struct Memberships<'a> {
    sets: Vec<HashSet<&'a str, FastHash>>,
}

impl<'a> Memberships<'a> {
    /// No clause resolved (for records that have no memberships).
    pub(crate) const fn none() -> Memberships<'a> {
        Memberships { sets: Vec::new() }
    }

    /// Resolves every clause's group list against `groups`, by name
    /// (case-insensitively) or by key. A listed group the source does not have is
    /// returned as an error: its members would silently drop out of scope.
    pub(crate) fn resolve<'c>(
        clauses: impl Iterator<Item = &'c [Box<str>]>,
        groups: &'a [SourceGroup],
    ) -> Result<Memberships<'a>, Vec<Box<str>>> {
        let mut sets = Vec::new();
        let mut missing = Vec::new();
        for wanted in clauses {
            let mut set = HashSet::default();
            for name in wanted {
                let as_name = GroupName::new(&**name);
                let found: Vec<&SourceGroup> = groups
                    .iter()
                    .filter(|g| {
                        g.key.as_str() == &**name || GroupName::new(g.name.as_str()) == as_name
                    })
                    .collect();
                if found.is_empty() {
                    missing.push(name.clone());
                }
                for g in found {
                    set.extend(g.members.iter().map(|m| m.as_str()));
                }
            }
            sets.push(set);
        }
        if missing.is_empty() {
            Ok(Memberships { sets })
        } else {
            Err(missing)
        }
    }

    pub(crate) fn contains(&self, slot: usize, user: &str) -> bool {
        self.sets.get(slot).is_some_and(|s| s.contains(user))
    }
}
