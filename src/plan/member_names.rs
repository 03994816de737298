//! The userNames of the members a plan's membership operations name, so that a
//! person reading the plan sees `grace@example.com (key u2)` rather than a bare
//! source key. Operations themselves name members by key only (that is what
//! the executor and a saved plan need); the names are looked up once, when a
//! plan is rendered for people, and never saved.

use std::collections::{HashMap, HashSet};

use crate::model::{Desired, SourceKey, State, UserName};

use super::Operation;

/// Member key → userName, for the members a plan's membership operations name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberNames(HashMap<SourceKey, UserName>);

impl MemberNames {
    /// The names of the members `operations` add or remove: the userName the
    /// source wants (`desired`, when given), else the one the state records.
    /// Only those members are looked up, so a plan without membership changes
    /// costs nothing.
    pub fn of<'a>(
        operations: impl IntoIterator<Item = &'a Operation>,
        desired: Option<&Desired>,
        state: &State,
    ) -> MemberNames {
        let wanted: HashSet<&SourceKey> = operations
            .into_iter()
            .flat_map(|op| match op {
                Operation::AddMembers { members, .. }
                | Operation::RemoveMembers { members, .. } => members.as_slice(),
                _ => &[],
            })
            .collect();
        let mut names = HashMap::with_capacity(wanted.len());
        if wanted.is_empty() {
            return MemberNames(names);
        }
        for d in desired.iter().flat_map(|d| d.users.iter()) {
            if wanted.contains(&d.key) {
                names.insert(d.key.clone(), d.user_name());
            }
        }
        for key in wanted {
            if names.contains_key(key) {
                continue;
            }
            if let Some(user) = state.users.get(key) {
                names.insert(key.clone(), user.user_name.clone());
            }
        }
        MemberNames(names)
    }

    /// The userName of the member with `key`, when known.
    pub fn get(&self, key: &SourceKey) -> Option<&UserName> {
        self.0.get(key)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(SourceKey, UserName)> for MemberNames {
    fn from_iter<I: IntoIterator<Item = (SourceKey, UserName)>>(iter: I) -> Self {
        MemberNames(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GroupKey, Status};
    use crate::plan::testkit::{desired, person, state_of};

    #[test]
    fn members_are_named_as_the_source_wants_else_as_the_state_records() {
        let ann = person("1", "ann@x.com", "Eng");
        let bob = person("2", "bob@x.com", "Eng");
        let mut state = state_of(&[(&ann, Status::Active), (&bob, Status::Active)]);
        state.users.get_mut(&ann.key).unwrap().user_name = UserName::new("old-ann@x.com");
        let d = desired(vec![ann.clone()], Vec::new());
        let ops = vec![
            Operation::AddMembers {
                key: GroupKey::new("g"),
                display_name: "G".into(),
                members: vec![ann.key.clone()],
            },
            Operation::RemoveMembers {
                key: GroupKey::new("g"),
                display_name: "G".into(),
                members: vec![bob.key.clone(), SourceKey::new("nobody")],
                dangling: Vec::new(),
                name_step: None,
            },
        ];
        let names = MemberNames::of(&ops, Some(&d), &state);
        assert_eq!(names.get(&ann.key).map(UserName::as_str), Some("ann@x.com"));
        assert_eq!(names.get(&bob.key).map(UserName::as_str), Some("bob@x.com"));
        assert_eq!(names.get(&SourceKey::new("nobody")), None);
        // Without the source, the state's name.
        let names = MemberNames::of(&ops, None, &state);
        assert_eq!(
            names.get(&ann.key).map(UserName::as_str),
            Some("old-ann@x.com")
        );
        // Nothing to name without membership changes.
        assert!(MemberNames::of(&[], Some(&d), &state).is_empty());
    }
}
