//! What a target holds, as a `--full` read (or a lookup) sees it: users reduced
//! to the attributes idsync manages, groups with their member ids.

use super::{GroupName, ScimId, UserAttr, UserAttrs, UserName};

/// A user as the target holds it, reduced to the attributes idsync manages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteUser {
    pub id: ScimId,
    pub attrs: UserAttrs,
    pub active: bool,
}

impl RemoteUser {
    /// The user's `userName`, when the target returned one.
    pub fn user_name(&self) -> Option<UserName> {
        self.attrs
            .get(&UserAttr::UserName)
            .map(|n| UserName::new(n.as_str()))
    }
}

/// A group as the target holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteGroup {
    pub id: ScimId,
    pub display_name: GroupName,
    pub external_id: Option<String>,
    pub members: Vec<ScimId>,
}

/// Everything a `--full` read found in the target.
#[derive(Clone, Debug, Default)]
pub struct TargetSnapshot {
    pub users: Vec<RemoteUser>,
    pub groups: Vec<RemoteGroup>,
}
