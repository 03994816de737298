//! What can go wrong reading Entra ID through Microsoft Graph: [`EntraError`]
//! says what went wrong and with what (the credential, the URL, what Graph
//! answered). Every one means the directory could not be read.

use std::borrow::Cow;
use std::path::PathBuf;

/// Why reading Entra ID failed. Nothing is planned from a failed read.
#[derive(Debug, thiserror::Error)]
pub enum EntraError {
    #[error("the Entra client secret variable {var} is not set")]
    SecretNotSet { var: String },
    /// `client_secret_file`, `private_key_file` or `certificate_file` cannot be
    /// used; `problem` says why (never its content).
    #[error("Entra client secret file {}: {problem}", .path.display())]
    SecretFile { path: PathBuf, problem: String },
    /// The token endpoint refused the credential. `reason` is what it said
    /// (Entra's `error` and `error_description`), never the secret.
    /// `credential` says where the credential comes from, never its value.
    #[error("Entra ID refused {credential} of client {client_id} in tenant {tenant}: {reason}")]
    AuthRefused {
        tenant: String,
        client_id: String,
        credential: String,
        reason: String,
    },
    /// No answer from the token endpoint or Graph (connection, TLS, timeout).
    #[error("{url}: {reason}; nothing was planned")]
    GraphUnreachable { url: String, reason: String },
    /// Graph refused a request. `permission`: the application permission a 403
    /// on this resource points to.
    #[error("Graph {url}: HTTP {status} {code}: {message}; nothing was planned")]
    GraphRefused {
        url: String,
        status: u16,
        code: String,
        message: String,
        permission: Option<&'static str>,
    },
    /// Throttled longer than a cycle should wait, or on every retry.
    #[error(
        "Graph {url}: throttled (HTTP {status}, Retry-After {retry_after}s) {attempts} times; nothing was planned"
    )]
    GraphThrottled {
        url: String,
        status: u16,
        retry_after: u64,
        attempts: u32,
    },
    /// An answer idsync cannot use (not JSON, a link to another host, a round
    /// that does not end).
    #[error("Graph {url}: {reason}; nothing was planned")]
    GraphBadAnswer { url: String, reason: String },
}

impl EntraError {
    /// Always true: a failed Entra read is a source that could not be read
    /// (exit 5), never wrong data.
    pub fn is_unavailable(&self) -> bool {
        use EntraError::*;
        match self {
            SecretNotSet { .. }
            | SecretFile { .. }
            | AuthRefused { .. }
            | GraphUnreachable { .. }
            | GraphRefused { .. }
            | GraphThrottled { .. }
            | GraphBadAnswer { .. } => true,
        }
    }

    /// What the operator should do next.
    pub fn hint(&self) -> Cow<'static, str> {
        use EntraError::*;
        let text: &'static str = match self {
            SecretNotSet { var } => {
                return format!(
                    "export {var}=<the app registration's client secret> before running idsync"
                )
                .into();
            }
            SecretFile { path, .. } => {
                return format!(
                    "make {} a regular file holding the credential, owned by idsync's user, chmod 600 (group and others must not read it), in a folder only that user can write to",
                    path.display()
                )
                .into();
            }
            AuthRefused { .. } => {
                "check tenant_id, client_id and the credential (secrets expire: make a new one \
                 under Certificates & secrets of the app registration, or upload the \
                 certificate there), then run `idsync check`"
            }
            GraphUnreachable { .. } => {
                "check authority_url / graph_url, the network and proxies, or raise timeout"
            }
            GraphRefused {
                permission: Some(permission),
                ..
            } => {
                return format!(
                    "grant the app registration the application permission {permission} \
                     (Microsoft Graph, admin consent), then run `idsync check`"
                )
                .into();
            }
            GraphRefused {
                status: 404, url, ..
            } if url.contains("/servicePrincipals/") => {
                "check `assign.app`: it is the enterprise app's object id (Enterprise \
                 applications → the app → Properties → Object ID), not the app registration's \
                 client id; then run `idsync check`"
            }
            GraphRefused { .. } => {
                "run `idsync check`; the next cycle reads the same changes again"
            }
            GraphThrottled { .. } => {
                "Graph's quota is shared by every app in the tenant: lower rate_limit or run \
                 cycles less often; the next cycle reads the same changes again"
            }
            GraphBadAnswer { .. } => "check graph_url; the next cycle reads the same changes again",
        };
        Cow::Borrowed(text)
    }
}
