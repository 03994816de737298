//! The state's users by key: the records in one vector, in the order they were
//! recorded, and a hash table of their 4-byte positions.
//!
//! An `IndexMap` is the same shape with 8-byte positions and each entry's
//! hash kept beside it: at a million users, 16 MB more for what a state load
//! never needs (nothing is removed from the state, and the table is sized once
//! as it loads, so no entry is ever rehashed but by a later growth).

use std::borrow::Borrow;
use std::fmt;
use std::hash::BuildHasher;

use super::positions::table_in_slot_order;
use super::{FastHash, SourceKey, StateUser};

/// Managed users by key, in the order they were recorded.
#[derive(Clone, Default)]
pub struct StateUsers {
    entries: Vec<(SourceKey, StateUser)>,
    positions: hashbrown::HashTable<u32>,
    hasher: FastHash,
}

impl StateUsers {
    pub fn new() -> StateUsers {
        StateUsers::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The position of `key`, if the state has it.
    pub fn get_index_of<Q: Borrow<str> + ?Sized>(&self, key: &Q) -> Option<usize> {
        let key = key.borrow();
        self.positions
            .find(self.hash(key), |&i| {
                self.entries[i as usize].0.as_str() == key
            })
            .map(|&i| i as usize)
    }

    pub fn get<Q: Borrow<str> + ?Sized>(&self, key: &Q) -> Option<&StateUser> {
        self.get_index_of(key).map(|i| &self.entries[i].1)
    }

    pub fn get_mut<Q: Borrow<str> + ?Sized>(&mut self, key: &Q) -> Option<&mut StateUser> {
        self.get_index_of(key).map(|i| &mut self.entries[i].1)
    }

    /// The position, key and record of `key`.
    pub fn get_full<Q: Borrow<str> + ?Sized>(
        &self,
        key: &Q,
    ) -> Option<(usize, &SourceKey, &StateUser)> {
        self.get_index_of(key).map(|i| {
            let (k, user) = &self.entries[i];
            (i, k, user)
        })
    }

    /// The state's own copy of `key` (shared by its memberships), and the record.
    pub fn get_key_value<Q: Borrow<str> + ?Sized>(
        &self,
        key: &Q,
    ) -> Option<(&SourceKey, &StateUser)> {
        self.get_index_of(key).and_then(|i| self.get_index(i))
    }

    /// The key and record at position `i`.
    pub fn get_index(&self, i: usize) -> Option<(&SourceKey, &StateUser)> {
        self.entries.get(i).map(|(k, user)| (k, user))
    }

    pub fn contains_key<Q: Borrow<str> + ?Sized>(&self, key: &Q) -> bool {
        self.get_index_of(key).is_some()
    }

    /// Records `user` under `key`: in place of the record there was (which is
    /// returned), or after the last one.
    pub fn insert(&mut self, key: SourceKey, user: StateUser) -> Option<StateUser> {
        let next = u32::try_from(self.entries.len()).expect("fewer than 2^32 users");
        let hash = self.hash(key.as_str());
        let (entries, hasher) = (&self.entries, &self.hasher);
        // One hash and one probe, whether the key is new or recorded again.
        match self.positions.entry(
            hash,
            |&i| entries[i as usize].0 == key,
            |&i| hasher.hash_one(entries[i as usize].0.as_str()),
        ) {
            hashbrown::hash_table::Entry::Occupied(found) => {
                let i = *found.get() as usize;
                Some(std::mem::replace(&mut self.entries[i].1, user))
            }
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert(next);
                self.entries.push((key, user));
                None
            }
        }
    }

    /// The users `entries` holds, in their order, each key once; or the
    /// first key found twice. A state's load builds its users this way: the
    /// table is filled in the order of its slots (see [`table_in_slot_order`]).
    pub fn from_unique(entries: Vec<(SourceKey, StateUser)>) -> Result<StateUsers, SourceKey> {
        assert!(
            u32::try_from(entries.len()).is_ok(),
            "fewer than 2^32 users"
        );
        let hasher = FastHash::default();
        let hashed = entries
            .iter()
            .enumerate()
            .map(|(i, (key, _))| (hasher.hash_one(key.as_str()), i as u32))
            .collect();
        let key = |i: u32| &entries[i as usize].0;
        match table_in_slot_order(
            hashed,
            |i, j| key(i) == key(j),
            |&i| hasher.hash_one(key(i).as_str()),
        ) {
            Ok(positions) => Ok(StateUsers {
                entries,
                positions,
                hasher,
            }),
            Err((_, later)) => Err(key(later).clone()),
        }
    }

    pub fn iter(&self) -> Iter<'_> {
        self.entries.iter().map(|(k, user)| (k, user))
    }

    pub fn keys(&self) -> impl Iterator<Item = &SourceKey> {
        self.entries.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &StateUser> {
        self.entries.iter().map(|(_, user)| user)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut StateUser> {
        self.entries.iter_mut().map(|(_, user)| user)
    }
}

/// The state's users in the order they were recorded.
pub type Iter<'a> = std::iter::Map<
    std::slice::Iter<'a, (SourceKey, StateUser)>,
    fn(&'a (SourceKey, StateUser)) -> (&'a SourceKey, &'a StateUser),
>;

impl<'a> IntoIterator for &'a StateUsers {
    type Item = (&'a SourceKey, &'a StateUser);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl<'a> IntoIterator for &'a mut StateUsers {
    type Item = (&'a SourceKey, &'a mut StateUser);
    type IntoIter = std::iter::Map<
        std::slice::IterMut<'a, (SourceKey, StateUser)>,
        fn(&'a mut (SourceKey, StateUser)) -> (&'a SourceKey, &'a mut StateUser),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter_mut().map(|(k, user)| (&*k, user))
    }
}

impl<Q: Borrow<str> + ?Sized> std::ops::Index<&Q> for StateUsers {
    type Output = StateUser;

    fn index(&self, key: &Q) -> &StateUser {
        self.get(key).expect("a user the state has")
    }
}

impl FromIterator<(SourceKey, StateUser)> for StateUsers {
    fn from_iter<I: IntoIterator<Item = (SourceKey, StateUser)>>(iter: I) -> StateUsers {
        let mut map = StateUsers::new();
        map.extend(iter);
        map
    }
}

impl Extend<(SourceKey, StateUser)> for StateUsers {
    fn extend<I: IntoIterator<Item = (SourceKey, StateUser)>>(&mut self, iter: I) {
        for (key, user) in iter {
            self.insert(key, user);
        }
    }
}

impl PartialEq for StateUsers {
    /// The same keys with equal records, in any order (as for a map).
    fn eq(&self, other: &StateUsers) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .all(|(k, user)| other.get(k).is_some_and(|o| o == user))
    }
}

impl fmt::Debug for StateUsers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Ownership, ScimId, Status, UserName};
    use proptest::prelude::*;

    fn user(id: u32) -> StateUser {
        StateUser {
            scim_id: ScimId::new(format!("id-{id}")).into(),
            user_name: UserName::new(format!("u{id}@x.com")),
            hash: crate::model::AttrHash([0; 16]),
            status: Status::Active,
            ownership: Ownership::Created,
            attrs: None,
        }
    }

    proptest! {
        /// Inserts (new keys and replacements) and look-ups agree with an
        /// `IndexMap`, order included.
        #[test]
        fn the_map_keeps_what_an_index_map_keeps(
            ops in proptest::collection::vec((0u32..60, 0u32..1000), 0..300),
        ) {
            let mut ours = StateUsers::new();
            let mut theirs: indexmap::IndexMap<SourceKey, StateUser> = indexmap::IndexMap::new();
            for (k, id) in ops {
                let key = SourceKey::new(format!("k{k}"));
                prop_assert_eq!(ours.insert(key.clone(), user(id)), theirs.insert(key, user(id)));
            }
            prop_assert_eq!(ours.len(), theirs.len());
            let ours_in_order: Vec<_> = ours.iter().collect();
            let theirs_in_order: Vec<_> = theirs.iter().collect();
            prop_assert_eq!(ours_in_order, theirs_in_order);
            for k in 0..70 {
                let key = format!("k{k}");
                prop_assert_eq!(ours.get(key.as_str()), theirs.get(key.as_str()));
                prop_assert_eq!(ours.get_index_of(key.as_str()), theirs.get_index_of(key.as_str()));
            }
        }
    }

    proptest! {
        /// A load's users, built in one go, are the users inserted one by
        /// one: the same order and look-ups, and later inserts (a new key,
        /// a key recorded again) behave alike.
        #[test]
        fn users_built_in_one_go_are_the_users_inserted_one_by_one(
            keys in proptest::collection::btree_set(0u32..100_000, 0..400),
            later in proptest::collection::vec(0u32..100_000, 0..20),
        ) {
            let entries: Vec<(SourceKey, StateUser)> = keys
                .iter()
                .rev()
                .map(|&k| (SourceKey::new(format!("user-key-number-{k}")), user(k)))
                .collect();
            let mut ours = StateUsers::from_unique(entries.clone()).unwrap();
            let mut theirs: StateUsers = entries.into_iter().collect();
            for k in later {
                let key = SourceKey::new(format!("user-key-number-{k}"));
                prop_assert_eq!(ours.insert(key.clone(), user(k + 1)), theirs.insert(key, user(k + 1)));
            }
            let ours_in_order: Vec<_> = ours.iter().collect();
            let theirs_in_order: Vec<_> = theirs.iter().collect();
            prop_assert_eq!(ours_in_order, theirs_in_order);
            for k in keys.iter().copied().chain([100_001]) {
                let key = format!("user-key-number-{k}");
                prop_assert_eq!(ours.get_index_of(key.as_str()), theirs.get_index_of(key.as_str()));
            }
        }
    }

    #[test]
    fn users_built_in_one_go_refuse_a_key_recorded_twice() {
        let entries = ["a", "b", "c", "b"]
            .map(|k| (SourceKey::new(k), user(1)))
            .to_vec();
        let refused = StateUsers::from_unique(entries).map(|_| ()).unwrap_err();
        assert_eq!(refused, SourceKey::new("b"));
    }

    #[test]
    fn a_key_is_found_by_its_text_or_itself() {
        let mut users = StateUsers::new();
        users.insert(SourceKey::new("a-long-key-past-fifteen-bytes"), user(1));
        assert!(users.contains_key("a-long-key-past-fifteen-bytes"));
        assert!(users.contains_key(&SourceKey::new("a-long-key-past-fifteen-bytes")));
        assert_eq!(users["a-long-key-past-fifteen-bytes"], user(1));
        assert_eq!(users.get_index(0).map(|(_, u)| u), Some(&user(1)));
        assert_eq!(users.get_index(1), None);
    }
}
