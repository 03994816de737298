//! Source adapters: read a whole directory into canonical records
//! (`SourceDirectory`). A read that fails or is incomplete fails the cycle before
//! anything is planned; adapters never return a partial directory.

pub mod csv;
pub mod ldap;

use std::collections::BTreeSet;

use crate::config::SourceSettings;
use crate::model::SourceDirectory;

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

/// Reads the configured source completely. `attributes`: the source attributes
/// the mapping references (LDAP asks the server for exactly these, plus the key).
pub async fn read(
    settings: &SourceSettings,
    attributes: &BTreeSet<String>,
) -> Result<SourceDirectory, SourceError> {
    match settings {
        SourceSettings::Csv(csv) => {
            let csv = csv.clone();
            tokio::task::spawn_blocking(move || csv::read(&csv))
                .await
                .map_err(|e| SourceError::Unavailable {
                    message: format!("the CSV reader stopped unexpectedly: {e}"),
                    hint: "this is a bug; please report it".into(),
                })?
        }
        SourceSettings::Ldap(ldap) => ldap::read(ldap, attributes).await,
    }
}

/// `idsync check`: reach and authenticate without reading everything (a CSV
/// source is read and counted).
pub async fn check(settings: &SourceSettings) -> Result<String, SourceError> {
    match settings {
        SourceSettings::Csv(_) => {
            let dir = read(settings, &BTreeSet::new()).await?;
            Ok(format!(
                "CSV source readable: {} users, {} groups",
                dir.users.len(),
                dir.groups.len()
            ))
        }
        SourceSettings::Ldap(ldap) => ldap::check(ldap).await,
    }
}
