//! What can go wrong reading a source, as data: [`SourceError`] is one
//! adapter's error ([`CsvError`], [`LdapError`], [`EntraError`]), each saying
//! what went wrong and with what (the file and line, the server and DN),
//! rendering the text an operator sees, and knowing whether the data is wrong
//! (fix the data, exit 2) or the source could not be read (exit 5).
//! [`SourceConfigError`] is a mistake in an adapter's configuration section,
//! located at the offending field.

use std::borrow::Cow;

use super::csv::CsvError;
use super::entra::EntraError;
use super::ldap::LdapError;

/// A mistake in a source adapter's configuration section, at the line and column
/// of the offending field. The top-level config turns it into a located error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SourceConfigError {
    /// Where the offending field's value is (for a missing field, the field it
    /// goes with).
    pub location: serde_saphyr::Location,
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

/// Why a source read failed. Either way nothing is planned from it:
/// [`SourceError::is_unavailable`] tells "the data is wrong" from "the source
/// could not be read".
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Csv(#[from] CsvError),
    #[error(transparent)]
    Ldap(#[from] LdapError),
    #[error(transparent)]
    Entra(#[from] EntraError),
}

impl SourceError {
    /// True when the source could not be read (a missing file, an unreachable
    /// server, a refused bind, a cut-short search: exit 5); false when it was
    /// read and the data is wrong (exit 2).
    pub fn is_unavailable(&self) -> bool {
        match self {
            SourceError::Csv(e) => e.is_unavailable(),
            SourceError::Ldap(e) => e.is_unavailable(),
            SourceError::Entra(e) => e.is_unavailable(),
        }
    }

    /// What the operator should do next.
    pub fn hint(&self) -> Cow<'static, str> {
        match self {
            SourceError::Csv(e) => e.hint(),
            SourceError::Ldap(e) => e.hint(),
            SourceError::Entra(e) => e.hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unreadable_sources_are_unavailable() {
        let data = SourceError::from(CsvError::BadRows {
            file: "users.csv".into(),
            problems: vec![],
            more: 0,
        });
        assert!(!data.is_unavailable());
        let down = SourceError::from(LdapError::ConnectFailed {
            url: "ldap://h".into(),
            reason: "refused".into(),
        });
        assert!(down.is_unavailable());
        assert_eq!(
            down.hint(),
            "check the URL's host and port, that the server runs, and firewalls"
        );
    }
}
