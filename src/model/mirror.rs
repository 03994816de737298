//! A local mirror of a source that reports changes rather than a directory
//! (Microsoft Entra ID through Graph delta queries): the objects the mapping
//! needs, and the cursors to ask for what changed since. The adapter applies
//! changes to a copy; the engine commits the copy after the cycle applied.

use std::collections::{BTreeMap, BTreeSet};

/// A user's selected properties by name; a property never set (or set to null)
/// is absent. Multi-valued properties keep every value.
pub type MirrorProps = BTreeMap<String, Vec<String>>;

/// A group: its name and its direct members' ids (users, groups or other
/// objects; resolved against the mirror when the directory is built).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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

impl Mirror {
    /// True when there is nothing to continue from.
    pub fn has_links(&self) -> bool {
        self.users_link.is_some() && self.groups_link.is_some()
    }
}
