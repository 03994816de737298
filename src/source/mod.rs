//! Source adapters: read a whole directory into canonical records
//! (`SourceDirectory`), or, for a source that can ([`StreamedRead`]: CSV
//! through [`StreamedSource`], LDAP), its groups and then its users one at a
//! time, for the engine to map as they arrive. A read that fails or is incomplete fails the cycle before anything
//! is planned; adapters never return a partial directory.
//!
//! Each adapter owns its configuration as written (`CsvConfig`, `LdapConfig`) and
//! as compiled (`CsvSettings`, `LdapSettings`) and implements [`Source`]; the
//! top-level config composes them and picks one. A configuration mistake is a
//! [`SourceConfigError`] located at the offending field; a failed read is a
//! [`SourceError`]: the adapter's own error (`CsvError`, `LdapError`,
//! `EntraError`), which says what went wrong and whether the data is wrong or
//! the source could not be read. Adapters never import the top-level config.

pub mod csv;
pub mod entra;
mod error;
pub mod ldap;
mod nested;
mod problems;

pub use error::{SourceConfigError, SourceError};

use std::collections::BTreeSet;

use futures_util::future::{BoxFuture, LocalBoxFuture};

use crate::model::{GroupsOf, Mirror, SourceAssignments, SourceDirectory, SourceGroup, SourceUser};

/// A directory idsync reads from.
pub trait Source: Send + Sync {
    /// Reads the directory completely. `attributes`: the source attributes the
    /// mapping references (LDAP asks the server for exactly these, plus the key).
    fn read<'a>(
        &'a self,
        attributes: &'a BTreeSet<String>,
    ) -> BoxFuture<'a, Result<SourceDirectory, SourceError>>;

    /// A source that reports changes rather than a directory and keeps a
    /// [`Mirror`] in the state DB between cycles (Entra ID): the engine then
    /// reads it through [`MirroredSource`] instead of [`Source::read`].
    /// `None` (the default): a source read whole every time.
    fn mirrored(&self) -> Option<&dyn MirroredSource> {
        None
    }

    /// A source that can give its groups first and then its users one at a
    /// time (CSV): the engine maps each user as it is read, so a large
    /// directory's records never all sit in memory at once. `None` (the
    /// default): the engine reads the whole directory with [`Source::read`].
    fn streamed(&self) -> Option<&dyn StreamedSource> {
        None
    }

    /// Starts a streamed read: groups first, then users one at a time (see
    /// [`StreamedRead`]); `attributes` as for [`Source::read`]. By default
    /// the [`Source::streamed`] read, whose groups come complete; a source
    /// that can only resolve its groups' members as its users arrive (LDAP)
    /// gives its own.
    fn stream(&self, attributes: &BTreeSet<String>) -> Option<Box<dyn StreamedRead + '_>> {
        let _ = attributes;
        self.streamed()
            .map(|s| Box::new(CompleteGroups(s)) as Box<dyn StreamedRead + '_>)
    }

    /// Whether a cycle's read runs best on a runtime of its own on the
    /// reading thread, rather than on the shared runtime's workers. LDAP: the
    /// connection's messages are then parsed on the thread that decodes their
    /// entries, with no hand-over between threads for each message and nothing
    /// allocated on one thread freed on another (a fifth less time for the
    /// read of 100,000 users). A source whose clients outlive the read (a
    /// pooled HTTP connection is bound to the runtime that opened it) keeps
    /// the default.
    fn reads_on_one_thread(&self) -> bool {
        false
    }

    /// `idsync check`: reaches and authenticates without reading everything, and
    /// says what it found.
    fn check(&self) -> BoxFuture<'_, Result<String, SourceError>>;

    /// One line naming the source, for `validate` and messages.
    fn describe(&self) -> String;
}

/// A source read through a mirror of it that the engine keeps between cycles
/// (see [`Source::mirrored`]).
pub trait MirroredSource: Sync {
    /// Reads the changes since `mirror` was committed and returns the mirror
    /// updated (for the engine to commit once the cycle applied), with the
    /// source's own assignments when the config asks for them.
    fn update<'a>(
        &'a self,
        attributes: &'a BTreeSet<String>,
        mirror: Mirror,
    ) -> BoxFuture<'a, Result<(Mirror, Option<SourceAssignments>), SourceError>>;

    /// The directory `mirror` stands for, as a streamed read: its groups
    /// whole, then each user made from the mirror as it is handed over, so
    /// the records of a large directory are never all held at once.
    fn directory<'m>(&self, mirror: &'m Mirror) -> Box<dyn StreamedRead + 'm>;
}

/// Drives `read` to its end and keeps every record: the whole directory (with
/// `assignments`, the source's own), for a caller that looks through it
/// (`explain`) rather than maps it.
pub async fn read_whole(
    mut read: Box<dyn StreamedRead + '_>,
    assignments: Option<SourceAssignments>,
) -> Result<SourceDirectory, SourceError> {
    let mut groups = read.groups().await?;
    let mut users = Vec::new();
    read.users(&mut |user, _| users.push(user)).await?;
    let unresolved_members = read.finish(&mut groups)?;
    Ok(SourceDirectory {
        users,
        groups,
        unresolved_members,
        assignments,
    })
}

/// A directory read in two passes, groups and users, each blocking (the
/// engine calls them on threads set aside for the read: one after the other,
/// or both at once when the mapping needs no user's groups). Together they
/// are one complete read, all or nothing, exactly as [`Source::read`].
pub trait StreamedSource: Sync {
    /// The groups, each member as the source names it: members that are not
    /// users of this read are left in, for the mapping to count and ignore.
    fn read_groups(&self) -> Result<Vec<SourceGroup>, SourceError>;

    /// Hands every user to `each` in source order, keeping none. A bad record
    /// still fails the read, once the whole file was read (so every problem is
    /// reported at once).
    fn read_users(&self, each: &mut dyn FnMut(SourceUser)) -> Result<(), SourceError>;
}

/// A user as a streamed read hands it over: with the groups it is in (by
/// position in the read's groups, each list sorted) when the groups' member
/// lists are still to be completed, `None` when they already list it.
pub type UserEach<'a> = dyn FnMut(SourceUser, Option<GroupsOf<&[usize]>>) + 'a;

/// One streamed read in progress: its groups, then its users handed over one
/// at a time, then the groups' members completed. Together one complete read,
/// all or nothing, exactly as [`Source::read`]: a failure of any step fails it.
pub trait StreamedRead {
    /// The groups, in the order the positions of [`StreamedRead::users`]
    /// refer to. Their members may still be empty (LDAP): then each user
    /// names its groups as it arrives.
    fn groups(&mut self) -> LocalBoxFuture<'_, Result<Vec<SourceGroup>, SourceError>>;

    /// Hands every user to `each`, keeping none.
    fn users<'a>(
        &'a mut self,
        each: &'a mut UserEach<'_>,
    ) -> LocalBoxFuture<'a, Result<(), SourceError>>;

    /// Completes `groups` (as [`StreamedRead::groups`] gave them) with the
    /// members the users named, and returns how many members were not users
    /// of the read. A bad record found on the way fails the read here.
    fn finish(self: Box<Self>, groups: &mut [SourceGroup]) -> Result<usize, SourceError>;
}

/// A [`StreamedSource`] as a [`StreamedRead`]: its groups come complete.
struct CompleteGroups<'s>(&'s dyn StreamedSource);

impl StreamedRead for CompleteGroups<'_> {
    fn groups(&mut self) -> LocalBoxFuture<'_, Result<Vec<SourceGroup>, SourceError>> {
        Box::pin(async move { self.0.read_groups() })
    }

    fn users<'a>(
        &'a mut self,
        each: &'a mut UserEach<'_>,
    ) -> LocalBoxFuture<'a, Result<(), SourceError>> {
        Box::pin(async move { self.0.read_users(&mut |user| each(user, None)) })
    }

    fn finish(self: Box<Self>, _groups: &mut [SourceGroup]) -> Result<usize, SourceError> {
        Ok(0)
    }
}
