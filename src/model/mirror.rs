//! A local mirror of a source that reports changes rather than a directory
//! (Microsoft Entra ID through Graph delta queries): the objects the mapping
//! needs, and the cursors to ask for what changed since. The adapter applies
//! changes to the loaded mirror; the engine commits what changed (found through
//! a digest taken at load) after the cycle applied.

use std::collections::{BTreeMap, BTreeSet};

/// A user's selected properties by name; a property never set (or set to null)
/// is absent. Multi-valued properties keep every value.
pub type MirrorProps = BTreeMap<String, Vec<String>>;

/// A group: its name and its direct members' ids (users, groups or other
/// objects; resolved against the mirror when the directory is built).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MirrorGroup {
    pub display_name: Option<String>,
    pub members: BTreeSet<String>,
}

/// Everything kept between cycles for an incremental source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mirror {
    /// Users by source id.
    pub users: BTreeMap<String, MirrorProps>,
    /// Groups by source id.
    pub groups: BTreeMap<String, MirrorGroup>,
    /// The committed cursor for users (a whole URL; opaque), `None` before the
    /// first committed round.
    pub users_link: Option<String>,
    /// The committed cursor for groups.
    pub groups_link: Option<String>,
    /// Identifies the property selection the links were made with: another
    /// selection needs a new full round.
    pub select_hash: String,
    /// When the last full round started (Unix seconds).
    pub full_at: Option<i64>,
}

/// What a mirror held when it was loaded, as one 64-bit digest per object:
/// enough to save only what a cycle changed, without keeping a second copy of
/// the whole mirror in memory. (A changed object whose digest collided with its
/// old one — odds of 2^-64 — would not be saved until it changes again.)
#[derive(Clone, Debug, Default)]
pub struct MirrorDigest {
    users: std::collections::HashMap<String, u64, foldhash::fast::FixedState>,
    groups: std::collections::HashMap<String, u64, foldhash::fast::FixedState>,
}

/// One fixed seed, so digests taken at load and at save time agree.
const DIGEST_SEED: u64 = 0x1d5c_0ffe_e5ee_d5ed;

fn digest<T: std::hash::Hash>(value: &T) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(DIGEST_SEED).hash_one(value)
}

impl MirrorDigest {
    /// The digest of `mirror`'s objects.
    pub fn of(mirror: &Mirror) -> MirrorDigest {
        MirrorDigest {
            users: mirror
                .users
                .iter()
                .map(|(id, props)| (id.clone(), digest(props)))
                .collect(),
            groups: mirror
                .groups
                .iter()
                .map(|(id, g)| (id.clone(), digest(g)))
                .collect(),
        }
    }

    /// Users that were there and are gone from `now`.
    pub fn removed_users<'a>(&'a self, now: &'a Mirror) -> impl Iterator<Item = &'a str> {
        self.users
            .keys()
            .filter(|id| !now.users.contains_key(*id))
            .map(String::as_str)
    }

    /// Groups that were there and are gone from `now`.
    pub fn removed_groups<'a>(&'a self, now: &'a Mirror) -> impl Iterator<Item = &'a str> {
        self.groups
            .keys()
            .filter(|id| !now.groups.contains_key(*id))
            .map(String::as_str)
    }

    /// Whether the user `id` holds `props` as it did at load.
    pub fn user_unchanged(&self, id: &str, props: &MirrorProps) -> bool {
        self.users.get(id) == Some(&digest(props))
    }

    /// Whether the group `id` is as it was at load.
    pub fn group_unchanged(&self, id: &str, group: &MirrorGroup) -> bool {
        self.groups.get(id) == Some(&digest(group))
    }
}

impl Mirror {
    /// True when there is nothing to continue from.
    pub fn has_links(&self) -> bool {
        self.users_link.is_some() && self.groups_link.is_some()
    }
}
