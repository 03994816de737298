//! Source adapters: read a whole directory into canonical records
//! (`SourceDirectory`). A read that fails or is incomplete fails the cycle before
//! anything is planned; adapters never return a partial directory.
//!
//! Each adapter owns its configuration as written (`CsvConfig`, `LdapConfig`) and
//! as compiled (`CsvSettings`, `LdapSettings`) and implements [`Source`]; the
//! top-level config composes them and picks one.

pub mod csv;
pub mod ldap;

use std::collections::BTreeSet;

use futures_util::future::BoxFuture;

use crate::model::SourceDirectory;

/// A directory idsync reads from.
pub trait Source: Send + Sync {
    /// Reads the directory completely. `attributes`: the source attributes the
    /// mapping references (LDAP asks the server for exactly these, plus the key).
    fn read<'a>(
        &'a self,
        attributes: &'a BTreeSet<String>,
    ) -> BoxFuture<'a, Result<SourceDirectory, SourceError>>;

    /// `idsync check`: reaches and authenticates without reading everything, and
    /// says what it found.
    fn check(&self) -> BoxFuture<'_, Result<String, SourceError>>;

    /// One line naming the source, for `validate` and messages.
    fn describe(&self) -> String;
}

/// Why a source read failed. Either way nothing is planned from it.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The data is wrong: bad rows, duplicate keys. The operator must fix the data.
    #[error("{summary}\n{}", .problems.join("\n"))]
    Invalid {
        summary: String,
        problems: Vec<String>,
        hint: String,
    },
    /// The source could not be read at all (missing file, server unreachable).
    #[error("{message}")]
    Unavailable { message: String, hint: String },
}

impl SourceError {
    pub fn hint(&self) -> &str {
        match self {
            SourceError::Invalid { hint, .. } | SourceError::Unavailable { hint, .. } => hint,
        }
    }
}
