//! The desired snapshot: what the mapping made of one complete source read, the
//! target as it should be.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    Email, FoldedRef, GroupKey, GroupName, Origin, SourceKey, UserAttr, UserAttrs, UserName,
};

/// A user as the target should have it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredUser {
    pub key: SourceKey,
    pub origin: Origin,
    /// Always holds `userName` (the mapping refuses a user without one).
    pub attrs: UserAttrs,
    /// False when the source marks the user disabled: the target account is
    /// deactivated (never created just to be deactivated).
    pub active: bool,
}

// A million of these are held through a cycle: 8 bytes more is 8 MB more.
const _: () = assert!(std::mem::size_of::<DesiredUser>() == 56);

impl DesiredUser {
    /// The userName, as operations carry it.
    pub fn user_name(&self) -> UserName {
        UserName::new(self.user_name_text())
    }

    /// The userName borrowed, compared and hashed as [`UserName`] is: for
    /// indexes over every user without a copy of each name.
    pub fn user_name_ref(&self) -> FoldedRef<'_> {
        FoldedRef(self.user_name_text())
    }

    /// The user's email: the `emails` value, else the userName.
    pub fn email(&self) -> Email {
        Email::new(
            self.attrs
                .get(UserAttr::Email)
                .unwrap_or(self.user_name_text()),
        )
    }

    fn user_name_text(&self) -> &str {
        self.attrs.get(UserAttr::UserName).unwrap_or_default()
    }
}

/// A group as the target should have it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredGroup {
    pub key: GroupKey,
    pub display_name: GroupName,
    /// Sorted and without duplicates; only keys of in-scope users.
    pub members: Vec<SourceKey>,
}

/// What the mapping made of one complete source read: the desired state of the
/// target, sorted by key.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    pub users: Vec<DesiredUser>,
    pub groups: Vec<DesiredGroup>,
    /// Users present in the source but outside the mapping's scope (for
    /// `skip_out_of_scope_deletions`).
    pub out_of_scope: BTreeSet<SourceKey>,
    /// Attributes written only when a user is created, never updated.
    pub create_only: BTreeSet<UserAttr>,
    /// Group members that were not in-scope users (counted for the summary).
    pub ignored_members: usize,
    /// Groups the source has but that cannot be synced this cycle (two groups
    /// with one display name): left exactly as they are in the target — not
    /// created, renamed or deleted, their memberships neither added nor removed —
    /// as if their read were incomplete. The cycle ends with exit 1.
    pub held_groups: Vec<HeldGroup>,
    /// With `assign`: users out of scope because nothing assigns them (a
    /// subset of `out_of_scope`; the reason a managed one is removed).
    pub unassigned_users: BTreeSet<SourceKey>,
    /// With `assign`: groups the source has that are not pushed because
    /// nothing assigns them, with why (the reason a managed one is deleted).
    pub unassigned_groups: BTreeMap<GroupKey, String>,
    /// What the mapping warns of (an `assign.users` entry naming no user of
    /// the read): the plan carries each among its warnings.
    pub warnings: Vec<String>,
}

/// A source group left alone this cycle, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldGroup {
    pub key: GroupKey,
    pub origin: Origin,
    /// Says what is wrong and how to fix it.
    pub reason: String,
}

/// A digest of a user's managed attributes, to find unchanged users without
/// comparing (or even loading) their last pushed attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttrHash(pub [u8; 16]);

impl AttrHash {
    /// Hashes `attrs`, leaving out `skip` (attributes written only on create, so a
    /// difference there never makes an update).
    pub fn of(attrs: &UserAttrs, skip: &BTreeSet<UserAttr>) -> AttrHash {
        // One contiguous buffer hashed at once: much cheaper than many small
        // incremental updates, and the same digest.
        let mut bytes = Vec::with_capacity(256);
        for (attr, value) in attrs {
            if skip.contains(&attr) {
                continue;
            }
            bytes.extend_from_slice(attr.name().as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(value.as_bytes());
            bytes.push(0);
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&blake3::hash(&bytes).as_bytes()[..16]);
        AttrHash(out)
    }
}
