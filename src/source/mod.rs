//! Source adapters: read a whole directory into canonical records
//! (`SourceDirectory`), or, for a source that can ([`StreamedSource`]), its
//! groups and then its users one at a time, for the engine to map as they
//! arrive. A read that fails or is incomplete fails the cycle before anything
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

use futures_util::future::BoxFuture;

use crate::model::{Mirror, SourceDirectory, SourceGroup, SourceUser};

/// A directory idsync reads from.
pub trait Source: Send + Sync {
    /// Reads the directory completely. `attributes`: the source attributes the
    /// mapping references (LDAP asks the server for exactly these, plus the key).
    fn read<'a>(
        &'a self,
        attributes: &'a BTreeSet<String>,
    ) -> BoxFuture<'a, Result<SourceDirectory, SourceError>>;

    /// True for a source that reports changes rather than a directory and keeps
    /// a [`Mirror`] in the state DB between cycles (Entra ID): the engine then
    /// calls [`Source::read_mirrored`] instead of [`Source::read`].
    fn uses_mirror(&self) -> bool {
        false
    }

    /// Reads the changes since `mirror` was committed, applies them to it, and
    /// returns the whole directory and the updated mirror (to be committed by
    /// the engine once the cycle applied). Sources without a mirror read
    /// everything and hand the mirror back untouched.
    fn read_mirrored<'a>(
        &'a self,
        attributes: &'a BTreeSet<String>,
        mirror: Mirror,
    ) -> BoxFuture<'a, Result<(SourceDirectory, Mirror), SourceError>> {
        Box::pin(async move { Ok((self.read(attributes).await?, mirror)) })
    }

    /// A source that can give its groups first and then its users one at a
    /// time (CSV): the engine maps each user as it is read, so a large
    /// directory's records never all sit in memory at once. `None` (the
    /// default): the engine reads the whole directory with [`Source::read`].
    fn streamed(&self) -> Option<&dyn StreamedSource> {
        None
    }

    /// `idsync check`: reaches and authenticates without reading everything, and
    /// says what it found.
    fn check(&self) -> BoxFuture<'_, Result<String, SourceError>>;

    /// One line naming the source, for `validate` and messages.
    fn describe(&self) -> String;
}

/// A directory read in two passes, groups then users, each blocking (the
/// engine calls them on a thread set aside for the read). Together they are
/// one complete read, all or nothing, exactly as [`Source::read`].
pub trait StreamedSource {
    /// The groups, each member as the source names it: members that are not
    /// users of this read are left in, for the mapping to count and ignore.
    fn read_groups(&self) -> Result<Vec<SourceGroup>, SourceError>;

    /// Hands every user to `each` in source order, keeping none. A bad record
    /// still fails the read, once the whole file was read (so every problem is
    /// reported at once).
    fn read_users(&self, each: &mut dyn FnMut(SourceUser)) -> Result<(), SourceError>;
}
