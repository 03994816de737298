//! The state as idsync last pushed it — the planner's view of the target — and
//! the one way it changes: a [`StateChange`], applied here in memory and
//! persisted by the store from the same value.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{
    AttrHash, GroupKey, GroupName, ScimId, SourceKey, StateUsers, StoredId, UserAttr, UserAttrs,
    UserName,
};

/// Whether idsync created an object or adopted one that already existed. Only
/// objects with one of these are ever changed; everything else in the target is
/// left alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ownership {
    Created,
    Adopted,
}

impl Ownership {
    pub fn as_str(self) -> &'static str {
        match self {
            Ownership::Created => "created",
            Ownership::Adopted => "adopted",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "created" => Some(Ownership::Created),
            "adopted" => Some(Ownership::Adopted),
            _ => None,
        }
    }
}

/// What the target holds for an object, as far as idsync last pushed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Disabled,
    /// Deleted from the target (or found missing); a comeback creates it anew.
    Removed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Disabled => "disabled",
            Status::Removed => "removed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Status::Active),
            "disabled" => Some(Status::Disabled),
            "removed" => Some(Status::Removed),
            _ => None,
        }
    }
}

/// One managed user as last pushed.
#[derive(Clone, Debug, PartialEq)]
pub struct StateUser {
    /// Held compactly: a million users' ids are most of a state's size.
    pub scim_id: StoredId,
    pub user_name: UserName,
    pub hash: AttrHash,
    pub status: Status,
    pub ownership: Ownership,
    /// The last pushed attributes: loaded only for users whose hash differs from
    /// the desired one (`StateDb::load_attrs`), to keep large states small
    /// (boxed: a pointer, where most users have none).
    pub attrs: Option<Box<UserAttrs>>,
}

// A million of these are held through a cycle, with the SCIM id inside.
const _: () = assert!(std::mem::size_of::<StateUser>() == 64);

impl StateUser {
    /// A user as just pushed: its attributes as the target now holds them,
    /// hashed as the planner compares them (leaving out `create_only`).
    pub fn pushed(
        scim_id: ScimId,
        user_name: UserName,
        attrs: UserAttrs,
        status: Status,
        ownership: Ownership,
        create_only: &BTreeSet<UserAttr>,
    ) -> StateUser {
        StateUser {
            scim_id: scim_id.into(),
            user_name,
            hash: AttrHash::of(&attrs, create_only),
            status,
            ownership,
            attrs: Some(Box::new(attrs)),
        }
    }
}

/// One managed group as last pushed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateGroup {
    pub scim_id: ScimId,
    pub display_name: GroupName,
    pub status: Status,
    pub ownership: Ownership,
}

/// The last pushed snapshot: the planner's view of the target.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    pub users: StateUsers,
    pub groups: BTreeMap<GroupKey, StateGroup>,
    pub memberships: BTreeMap<GroupKey, BTreeSet<SourceKey>>,
    /// Bumped by every write; part of a saved plan's fingerprint.
    pub generation: i64,
}

impl State {
    /// Memberships idsync pushed into groups it manages and has not removed.
    pub fn managed_memberships(&self) -> usize {
        self.memberships
            .iter()
            .filter(|(g, _)| {
                self.groups
                    .get(*g)
                    .is_some_and(|g| g.status != Status::Removed)
            })
            .map(|(_, members)| members.len())
            .sum()
    }

    /// Users idsync manages and has not removed.
    pub fn managed_users(&self) -> usize {
        self.users
            .values()
            .filter(|u| u.status != Status::Removed)
            .count()
    }

    /// Finds users' records for keys asked in key order (see [`UserCursor`]).
    pub fn user_cursor(&self) -> UserCursor<'_> {
        UserCursor {
            users: &self.users,
            next: 0,
        }
    }
}

/// Finds the state's records of users asked for in key order: the record
/// after the last one found is tried first, with one key comparison, and
/// only when it is not the one asked for is the key looked up. The state
/// keeps its users in the order they were recorded, which is key order
/// where they were created in key order (a first sync creates them so, and
/// directories that number new people upwards keep it): then a million
/// look-ups become a walk. In any other order every key is looked up, as
/// without the cursor, at the cost of one comparison more.
pub struct UserCursor<'s> {
    users: &'s StateUsers,
    next: usize,
}

impl<'s> UserCursor<'s> {
    /// The record of `key` and its position in the state, if there is one.
    pub fn find(&mut self, key: &SourceKey) -> Option<(usize, &'s StateUser)> {
        let found = match self.users.get_index(self.next) {
            Some((k, user)) if k == key => Some((self.next, user)),
            _ => self.users.get_full(key).map(|(i, _, user)| (i, user)),
        };
        if let Some((i, _)) = found {
            self.next = i + 1;
        }
        found
    }
}

/// A row-level change to the state, committed together with an operation's
/// outcome. [`State::apply`] is its meaning in memory; the store persists the
/// same value, and a test holds the two to the same result.
#[derive(Clone, Debug, PartialEq)]
pub enum StateChange {
    /// A user created, adopted or updated: its full pushed record.
    PutUser {
        key: SourceKey,
        user: StateUser,
    },
    UserStatus {
        key: SourceKey,
        status: Status,
    },
    /// The account of `from` (gone from the source) now belongs to `key`:
    /// `from` is removed (with its memberships) and `key` holds the account, so
    /// one SCIM id never has two live rows.
    HandOver {
        from: SourceKey,
        key: SourceKey,
        user: StateUser,
    },
    PutGroup {
        key: GroupKey,
        group: StateGroup,
    },
    GroupStatus {
        key: GroupKey,
        status: Status,
    },
    MembersAdded {
        group: GroupKey,
        users: Vec<SourceKey>,
    },
    MembersRemoved {
        group: GroupKey,
        users: Vec<SourceKey>,
    },
    /// The group's members as the target holds them (`--full`).
    SetMembers {
        group: GroupKey,
        users: BTreeSet<SourceKey>,
    },
}

impl State {
    /// Applies a committed change in memory, exactly as the store persists it.
    pub fn apply(&mut self, change: &StateChange) {
        match change {
            StateChange::PutUser { key, user } => {
                self.users.insert(key.clone(), user.clone());
            }
            StateChange::UserStatus { key, status } => {
                if let Some(u) = self.users.get_mut(key) {
                    u.status = *status;
                }
                if *status == Status::Removed {
                    self.forget_memberships(key);
                }
            }
            StateChange::HandOver { from, key, user } => {
                if let Some(u) = self.users.get_mut(from) {
                    u.status = Status::Removed;
                }
                self.forget_memberships(from);
                self.users.insert(key.clone(), user.clone());
            }
            StateChange::PutGroup { key, group } => {
                // A group recreated under a new id starts with no members pushed.
                if self
                    .groups
                    .get(key)
                    .is_some_and(|g| g.scim_id != group.scim_id)
                {
                    self.memberships.remove(key);
                }
                self.groups.insert(key.clone(), group.clone());
            }
            StateChange::GroupStatus { key, status } => {
                if let Some(g) = self.groups.get_mut(key) {
                    g.status = *status;
                }
                if *status == Status::Removed {
                    self.memberships.remove(key);
                }
            }
            StateChange::MembersAdded { group, users } => {
                if !users.is_empty() {
                    self.memberships
                        .entry(group.clone())
                        .or_default()
                        .extend(users.iter().cloned());
                }
            }
            StateChange::MembersRemoved { group, users } => {
                if let Some(m) = self.memberships.get_mut(group) {
                    for u in users {
                        m.remove(u);
                    }
                    if m.is_empty() {
                        self.memberships.remove(group);
                    }
                }
            }
            StateChange::SetMembers { group, users } => {
                if users.is_empty() {
                    self.memberships.remove(group);
                } else {
                    self.memberships.insert(group.clone(), users.clone());
                }
            }
        }
    }

    fn forget_memberships(&mut self, user: &SourceKey) {
        for members in self.memberships.values_mut() {
            members.remove(user);
        }
        self.memberships.retain(|_, m| !m.is_empty());
    }

    /// The key of another user (live, disabled, or removed) recorded with
    /// `scim_id`: the account is that user's, not `key`'s. A scan: for the rare
    /// paths (a 409, a resumed create), never per operation.
    pub fn owner_of(&self, scim_id: &ScimId, key: &SourceKey) -> Option<(&SourceKey, &StateUser)> {
        // Packed once, then compared as held: 16 bytes a user.
        let wanted = StoredId::from(scim_id);
        self.users
            .iter()
            .filter(|(k, u)| *k != key && u.scim_id == wanted)
            .min_by_key(|(_, u)| u.status == Status::Removed)
    }

    /// The live (not removed) user with `key`.
    pub fn live_user(&self, key: &SourceKey) -> Option<&StateUser> {
        self.users.get(key).filter(|u| u.status != Status::Removed)
    }

    /// The live (not removed) group with `key`.
    pub fn live_group(&self, key: &GroupKey) -> Option<&StateGroup> {
        self.groups.get(key).filter(|g| g.status != Status::Removed)
    }
}

/// One user's value the target did not keep as idsync sent it (dropped, or
/// stored another value), in the answer to a write: evidence about that user
/// only (see README, "What the target keeps").
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AttrNote {
    pub attr: UserAttr,
    /// The value sent.
    pub sent: String,
    /// What the target then held; `None`: nothing.
    pub stored: Option<String>,
}

impl std::fmt::Display for AttrNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.stored {
            None => write!(
                f,
                "the target did not keep `{}` (sent {:?}, stored none)",
                self.attr.name(),
                self.sent
            ),
            Some(stored) => write!(
                f,
                "the target kept `{}` otherwise than sent (sent {:?}, stored {:?})",
                self.attr.name(),
                self.sent,
                stored
            ),
        }
    }
}

/// The notes on one attribute, over every managed user: how many users they
/// rest on, and the latest as an example.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NoteSummary {
    pub attr: UserAttr,
    pub users: u64,
    pub example: AttrNote,
}

impl std::fmt::Display for NoteSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = &self.example;
        write!(
            f,
            "`{}` not kept as sent for {} user{} (e.g. sent {:?}, stored {})",
            self.attr.name(),
            self.users,
            if self.users == 1 { "" } else { "s" },
            e.sent,
            e.stored
                .as_deref()
                .map_or_else(|| "none".to_owned(), |s| format!("{s:?}"))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttrHash, ScimId, UserName};

    fn user(key: &str) -> (SourceKey, StateUser) {
        (
            SourceKey::new(key),
            StateUser {
                scim_id: ScimId::new(format!("id-{key}")).into(),
                user_name: UserName::new(format!("{key}@example.com")),
                hash: AttrHash([0; 16]),
                status: Status::Active,
                ownership: Ownership::Created,
                attrs: None,
            },
        )
    }

    /// Walked or looked up, the cursor finds what a look-up finds, whatever
    /// order the state recorded its users in.
    #[test]
    fn the_user_cursor_finds_what_a_look_up_finds_in_any_recorded_order() {
        let asked: Vec<SourceKey> = ["a", "b", "c", "d", "e", "f", "g", "h"]
            .into_iter()
            .map(SourceKey::new)
            .collect();
        for recorded in [
            vec!["b", "c", "d", "f", "h"],
            vec!["h", "f", "d", "c", "b"],
            vec!["d", "b", "h", "c", "f"],
            vec![],
        ] {
            let state = State {
                users: recorded.iter().map(|k| user(k)).collect(),
                ..State::default()
            };
            let mut cursor = state.user_cursor();
            for key in &asked {
                let expected = state.users.get_full(key).map(|(i, _, u)| (i, u));
                assert_eq!(cursor.find(key), expected, "{key} in {recorded:?}");
            }
        }
    }
}
