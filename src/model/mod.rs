//! The vocabulary of the pipeline, at the bottom of every import: typed
//! identifiers (names compare case-insensitively by type), source records, the
//! desired snapshot a mapping produces, the state as last pushed with the one
//! way it changes, what a target holds, and the table of SCIM user attributes.
//!
//! Nothing here does I/O, and nothing here imports another idsync module.

mod attr;
mod attrs;
mod desired;
mod dn;
mod exit;
mod identity;
mod mirror;
mod op;
mod positions;
mod record;
mod remote;
mod rules;
mod state;
mod state_users;
mod stored_id;

pub use attr::{
    AttrSchema, AttrShape, AttrSpec, ENTERPRISE_USER, GROUP_SCHEMA, USER_SCHEMA, UserAttr,
};
pub use attrs::UserAttrs;
pub use desired::{AttrHash, Desired, DesiredGroup, DesiredUser, HeldGroup};
pub use dn::normalize_dn;
pub use exit::Exit;
pub use identity::{
    Domain, Email, FoldedRef, GroupKey, GroupName, ScimId, SourceKey, UserName, fold,
};
pub use mirror::{MemberIds, Mirror, MirrorDigest, MirrorGroup, MirrorProps, PropChange};
pub use op::OpKind;
pub use record::{
    ArcStr, GroupsOf, Origin, SourceAssignments, SourceAttrs, SourceDirectory, SourceGroup,
    SourceUser,
};
pub use remote::{
    CreatedAt, MemberRef, MemberResolver, RemoteGroup, RemoteMember, RemoteUser, ResolvedMembers,
    TargetSnapshot,
};
pub use rules::TargetRules;
pub use state::{
    AttrNote, NoteSummary, Ownership, State, StateChange, StateGroup, StateUser, Status, UserCursor,
};
pub use state_users::StateUsers;
pub use stored_id::{IdText, StoredId};

/// A fast, randomly seeded hasher for the large in-memory maps of a cycle.
pub type FastHash = foldhash::fast::RandomState;
/// A `HashMap` with [`FastHash`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, FastHash>;
/// A `HashSet` with [`FastHash`].
pub type FastSet<K> = std::collections::HashSet<K, FastHash>;
