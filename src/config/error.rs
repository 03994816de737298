//! [`ConfigError`]: a configuration mistake, located in its file where possible.

use std::path::PathBuf;

use serde_saphyr::Location;

use crate::mapping::MappingError;
use crate::scim::config::TokenError;

/// A configuration mistake, located in its file where possible.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}")]
    At {
        file: String,
        line: u64,
        column: u64,
        message: String,
        hint: Option<String>,
    },
    #[error("{file}: {message}")]
    File {
        file: String,
        message: String,
        hint: Option<String>,
    },
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error("secret: {message}")]
    Secret { message: String, hint: String },
}

impl ConfigError {
    /// What the operator should do next, when we know.
    pub fn hint(&self) -> Option<String> {
        match self {
            ConfigError::At { hint, .. } | ConfigError::File { hint, .. } => hint.clone(),
            ConfigError::Secret { hint, .. } => Some(hint.clone()),
            ConfigError::Read { .. } => {
                Some("check the path given with -c or IDSYNC_CONFIG".to_string())
            }
            // Mapping diagnostics carry their own `hint:` lines.
            ConfigError::Mapping(_) => None,
        }
    }

    /// A mistake at `location` in `file`, with what to do about it.
    pub(super) fn at(file: &str, location: &Location, message: String, hint: String) -> Self {
        ConfigError::At {
            file: file.to_string(),
            line: location.line(),
            column: location.column(),
            message,
            hint: Some(hint),
        }
    }
}

/// The SCIM token cannot be read.
impl From<TokenError> for ConfigError {
    fn from(e: TokenError) -> Self {
        ConfigError::Secret {
            message: e.message,
            hint: e.hint,
        }
    }
}
