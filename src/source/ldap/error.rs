//! What can go wrong reading an LDAP or Active Directory source:
//! [`LdapError`] says what went wrong and with what (the server, the base DN,
//! the entries), and whether the entries are wrong or the directory could not
//! be read.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::report::quote;
use crate::secret::{Problem, SecretFileError};
use crate::source::problems::render_list;

/// Why reading an LDAP source failed. [`LdapError::is_unavailable`] tells "the
/// entries are wrong" from "the directory could not be read".
#[derive(Debug, thiserror::Error)]
pub enum LdapError {
    // -- the entries are wrong -----------------------------------------------
    /// User entries without a usable key, or with another user's key.
    #[error("{}", .0.render("users"))]
    BadUsers(Box<BadEntries>),
    /// Group entries without a usable key or a name, or with another group's key.
    #[error("{}", .0.render("groups"))]
    BadGroups(Box<BadEntries>),

    // -- the bind password ---------------------------------------------------
    #[error("the LDAP bind password variable {var} is not set")]
    PasswordNotSet { var: String },
    #[error("cannot read bind password file {}: {source}", .path.display())]
    PasswordFileUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Group or others may read the file; `mode` is its permission bits.
    #[error("bind password file {} is open to other users (mode {mode:o})", .path.display())]
    PasswordFileExposed { path: PathBuf, mode: u32 },
    #[error("bind password file {} is empty", .path.display())]
    PasswordFileEmpty { path: PathBuf },
    /// Not a regular file, someone else's, or in a folder others can write to.
    #[error("{}", .0.message("bind password file"))]
    PasswordFileRefused(SecretFileError),

    // -- TLS and the connection ----------------------------------------------
    /// `ca_file` cannot be used as a trust anchor.
    #[error("{}", .problem.render(.path))]
    CaFile {
        path: PathBuf,
        problem: CaFileProblem,
    },
    #[error("TLS set-up failed: {reason}")]
    TlsSetup { reason: String },
    /// The TLS handshake failed (untrusted certificate, wrong host name, not a
    /// TLS port). `with_ca_file`: a `ca_file` was configured.
    #[error("LDAP {url}: TLS handshake failed: {reason}")]
    TlsHandshake {
        url: String,
        reason: String,
        with_ca_file: bool,
    },
    /// The certificate verified against the trust store but names no host at
    /// all (no subjectAltName): Samba's self-generated certificate is like that.
    #[error(
        "LDAP {url}: TLS handshake failed: the server's certificate names no host (it has no \
         subjectAltName, and the subject's CN is not used to verify a host name), so it cannot \
         be valid for {host}"
    )]
    TlsCertificateWithoutNames { url: String, host: String },
    #[error("LDAP {url}: no connection within {}", humantime::format_duration(*.timeout))]
    ConnectTimeout { url: String, timeout: Duration },
    /// `server`: what the server answered.
    #[error("LDAP {url}: the server refused StartTLS: {server}")]
    StartTlsRefused { url: String, server: String },
    #[error("LDAP {url}: cannot connect: {reason}")]
    ConnectFailed { url: String, reason: String },
    /// The server refused the bind. `password_source` names where the password
    /// comes from (a variable or a file), never the password.
    #[error("LDAP {url}: bind as {dn} {reason}")]
    BindRefused {
        url: String,
        dn: String,
        reason: BindRefusal,
        password_source: String,
    },

    // -- searches ------------------------------------------------------------
    /// A size, time or administrative limit cut a search short after `entries`.
    #[error(
        "LDAP {url}: the server stopped the search of {base} after {entries} entries \
         ({limit}: {server}); a partial directory is never used, nothing was planned"
    )]
    LimitExceeded {
        url: String,
        base: String,
        entries: usize,
        limit: SearchLimit,
        server: String,
    },
    /// A base DN that does not exist, or that the bind DN cannot see.
    #[error("LDAP {url}: base DN {base} does not exist (or is hidden from {bind_dn})")]
    BaseNotFound {
        url: String,
        base: String,
        bind_dn: String,
    },
    #[error("LDAP {url}: {base} is not a valid DN: {server}")]
    InvalidBaseDn {
        url: String,
        base: String,
        server: String,
    },
    /// The base DN is held by another server; referrals are never followed.
    #[error(
        "LDAP {url}: the server does not hold {base} and referred the search to {}; \
         referrals are not followed",
        if .refs.is_empty() { "another server".to_string() } else { .refs.join(", ") }
    )]
    Referral {
        url: String,
        base: String,
        refs: Vec<String>,
    },
    #[error("LDAP {url}: the server does not support paged results: {server}")]
    PagingUnsupported { url: String, server: String },
    #[error("LDAP {url}: {bind_dn} may not search {base}: {server}")]
    AccessDenied {
        url: String,
        bind_dn: String,
        base: String,
        server: String,
    },
    #[error("LDAP {url}: the server is busy or unavailable: {server}")]
    ServerBusy { url: String, server: String },
    /// Any other non-success result of a search.
    #[error(
        "LDAP {url}: the search of {base} failed after {entries} entries: {server}; nothing was planned"
    )]
    SearchFailed {
        url: String,
        base: String,
        entries: usize,
        server: String,
    },
    /// An operation got no answer within the configured timeout.
    #[error(
        "LDAP {url}: {operation} got no answer within {}; nothing was planned",
        humantime::format_duration(*.timeout)
    )]
    NoAnswer {
        url: String,
        operation: LdapOperation,
        timeout: Duration,
    },
    /// The connection broke during an operation.
    #[error("LDAP {url}: the connection failed during {operation}: {reason}; nothing was planned")]
    ConnectionLost {
        url: String,
        operation: LdapOperation,
        reason: String,
    },
    /// Active Directory sent a ranged member attribute and the rest of its
    /// values could not be fetched; `stopped_at` is the first missing value.
    #[error(
        "LDAP {url}: the server sent only part of the {attribute} values of {group_dn} \
         (stopped at value {stopped_at}); nothing was planned"
    )]
    PartialMemberRange {
        url: String,
        attribute: String,
        group_dn: String,
        stopped_at: u64,
    },
}

impl LdapError {
    /// The bind password file refused by the secret-file rule.
    pub fn password_file(e: SecretFileError) -> LdapError {
        match e.problem {
            Problem::Unreadable(source) => LdapError::PasswordFileUnreadable {
                path: e.path,
                source,
            },
            Problem::Exposed { mode } => LdapError::PasswordFileExposed { path: e.path, mode },
            _ => LdapError::PasswordFileRefused(e),
        }
    }

    /// True when the directory could not be read (an unreachable server, a
    /// refused bind, a cut-short search: exit 5); false when it was read and
    /// entries are wrong (exit 2).
    pub fn is_unavailable(&self) -> bool {
        use LdapError::*;
        match self {
            BadUsers(_) | BadGroups(_) => false,
            PasswordNotSet { .. }
            | PasswordFileUnreadable { .. }
            | PasswordFileExposed { .. }
            | PasswordFileEmpty { .. }
            | PasswordFileRefused(_)
            | CaFile { .. }
            | TlsSetup { .. }
            | TlsHandshake { .. }
            | TlsCertificateWithoutNames { .. }
            | ConnectTimeout { .. }
            | StartTlsRefused { .. }
            | ConnectFailed { .. }
            | BindRefused { .. }
            | LimitExceeded { .. }
            | BaseNotFound { .. }
            | InvalidBaseDn { .. }
            | Referral { .. }
            | PagingUnsupported { .. }
            | AccessDenied { .. }
            | ServerBusy { .. }
            | SearchFailed { .. }
            | NoAnswer { .. }
            | ConnectionLost { .. }
            | PartialMemberRange { .. } => true,
        }
    }

    /// What the operator should do next.
    pub fn hint(&self) -> Cow<'static, str> {
        use LdapError::*;
        const CHECK_BASES: &str = "check base_dn, user_base_dn and group_base_dn";
        let text: &'static str = match self {
            BadUsers(bad) => {
                return format!(
                    "every user needs exactly one {} and keys must be unique; fix the entries, \
                     or narrow user_filter to exclude them{}",
                    bad.key_attribute,
                    bad.find_duplicates()
                )
                .into();
            }
            BadGroups(bad) => {
                return format!(
                    "every group needs one {} and a {}; fix the entries, or narrow \
                     group_filter to exclude them{}",
                    bad.key_attribute,
                    bad.name_attribute.as_deref().unwrap_or("name"),
                    bad.find_duplicates()
                )
                .into();
            }
            TlsCertificateWithoutNames { host, .. } => {
                return format!(
                    "issue the directory server a certificate whose subjectAltName names the host \
                     idsync connects to (DNS:{host} or IP:{host}), signed by a CA in the system \
                     trust store or in ca_file, and install it on the server (Samba: `tls \
                     certfile` and `tls keyfile` in smb.conf; AD: the domain controller's \
                     certificate from your enterprise CA)"
                )
                .into();
            }
            PasswordNotSet { var } => {
                return format!(
                    "export {var}=<the service account's password> before running idsync"
                )
                .into();
            }
            PasswordFileUnreadable { .. } => "check bind_password_file in the source section",
            PasswordFileExposed { path, .. } => {
                return format!("chmod 600 {}", path.display()).into();
            }
            PasswordFileEmpty { .. } => "write the service account's password into it",
            PasswordFileRefused(e) => return e.hint("bind_password_file").into(),
            CaFile { .. } | TlsSetup { .. } => {
                "ca_file must be a PEM file with the certificate of the CA that signed the \
                 directory server's certificate"
            }
            TlsHandshake {
                with_ca_file: true, ..
            } => {
                "check that ca_file holds the CA that signed the server's certificate and that \
                 the URL's host name is in the certificate"
            }
            TlsHandshake {
                with_ca_file: false,
                ..
            } => {
                "if the server's certificate comes from a private CA, set ca_file to that CA's \
                 PEM file; the URL's host name must be in the certificate"
            }
            ConnectTimeout { .. } => {
                "check the URL's host and port, that the server runs, and firewalls; or raise \
                 timeout"
            }
            StartTlsRefused { .. } => {
                "use an ldaps:// URL, or ask the directory's administrators to enable StartTLS"
            }
            ConnectFailed { .. } => {
                "check the URL's host and port, that the server runs, and firewalls"
            }
            BindRefused {
                reason,
                password_source,
                ..
            } => return reason.hint(password_source),
            LimitExceeded { limit, .. } => limit.hint(),
            BaseNotFound { .. } => {
                "check base_dn, user_base_dn and group_base_dn, and that the service account \
                 may read them"
            }
            InvalidBaseDn { .. } => CHECK_BASES,
            Referral { .. } => {
                "point url at a server that holds the base DN (for AD, a domain controller of \
                 that domain)"
            }
            PagingUnsupported { .. } => {
                "idsync reads with the paged results control (RFC 2696); enable it on the server"
            }
            AccessDenied { .. } => "grant the service account read access to the users and groups",
            ServerBusy { .. } => "try again later",
            SearchFailed { .. } => {
                "if the server mentions the page size, set page_size at or below its limit"
            }
            NoAnswer { .. } => "raise timeout if the server is slow, or check the server's health",
            ConnectionLost { .. } => "check the server's health and the network, then run again",
            PartialMemberRange { .. } => "the group may have changed during the read; run again",
        };
        Cow::Borrowed(text)
    }
}

/// Why an LDAP entry has no usable key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyProblem {
    /// The entry has no value of the key attribute.
    Missing,
    /// The key attribute has several values.
    SeveralValues { count: usize },
    /// A text key attribute came back as binary.
    Binary,
    /// An objectGUID that is not 16 bytes long.
    GuidLength { len: usize },
    /// An objectGUID sent as text that is not a GUID.
    NotAGuid { value: String },
}

impl KeyProblem {
    /// The problem, told about the entry's `attribute`.
    fn describe(&self, attribute: &str) -> String {
        match self {
            KeyProblem::Missing => format!("it has no {attribute}"),
            KeyProblem::SeveralValues { count } => {
                format!("it has {count} values of {attribute}; the key must be single-valued")
            }
            KeyProblem::Binary => format!("its {attribute} is binary, not text"),
            KeyProblem::GuidLength { len } => {
                format!("its {attribute} is {len} bytes long, not 16")
            }
            KeyProblem::NotAGuid { value } => {
                format!("its {attribute} {} is not a GUID", quote(value))
            }
        }
    }
}

/// Why one LDAP entry cannot become a user or a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryProblem {
    /// No usable key in `attribute`.
    Key {
        dn: String,
        attribute: String,
        problem: KeyProblem,
    },
    /// The key is already the key of the entry `other` (a DN).
    DuplicateKey {
        dn: String,
        attribute: String,
        key: String,
        other: String,
    },
    /// A group without a name in `attribute`.
    NoName { dn: String, attribute: String },
}

impl fmt::Display for EntryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryProblem::Key {
                dn,
                attribute,
                problem,
            } => write!(f, "{dn}: {}", problem.describe(attribute)),
            EntryProblem::DuplicateKey {
                dn,
                attribute,
                key,
                other,
            } => write!(f, "{dn}: {attribute} {key} is also the key of {other}"),
            EntryProblem::NoName { dn, attribute } => write!(f, "{dn}: it has no {attribute}"),
        }
    }
}

/// The LDAP entries of one search that cannot become users or groups: the
/// first `problems` in the order the server sent them, and how many `more`
/// were not listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadEntries {
    pub url: String,
    /// Where and what was searched.
    pub base: String,
    pub filter: String,
    /// The attribute that keys the entries.
    pub key_attribute: String,
    /// The attribute that names them (groups only).
    pub name_attribute: Option<String>,
    pub problems: Vec<EntryProblem>,
    pub more: usize,
}

impl BadEntries {
    /// How to find the entries that share the first duplicate key (the
    /// report names the later one by its DN, the earlier by its place in the
    /// search): the search that returns both. Empty without a duplicate.
    fn find_duplicates(&self) -> String {
        self.problems
            .iter()
            .find_map(|p| match p {
                EntryProblem::DuplicateKey { attribute, key, .. } => Some(format!(
                    "; both entries of a shared key are found with `ldapsearch -b \"{}\" \"({attribute}={})\" dn`",
                    self.base,
                    escape_filter_value(key)
                )),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// The report; `what` is "users" or "groups".
    fn render(&self, what: &str) -> String {
        let listed = self.problems.iter().map(ToString::to_string);
        render_list(
            &format!(
                "LDAP {} {what} under {} matching {}",
                self.url, self.base, self.filter
            ),
            listed,
            self.more,
        )
    }
}

/// `value` as an LDAP filter's assertion value: `*`, `(`, `)`, `\\` and NUL
/// escaped as `\\XX` (RFC 4515).
fn escape_filter_value(value: &str) -> std::borrow::Cow<'_, str> {
    ldap3::ldap_escape(value)
}

/// Why `ca_file` cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaFileProblem {
    Unreadable {
        reason: String,
    },
    /// A PEM section that does not parse.
    Malformed {
        reason: String,
    },
    /// A certificate the trust store refuses.
    UnusableCertificate {
        reason: String,
    },
    NoCertificate,
}

impl CaFileProblem {
    fn render(&self, path: &Path) -> String {
        let path = path.display();
        match self {
            CaFileProblem::Unreadable { reason } => format!("cannot read ca_file {path}: {reason}"),
            CaFileProblem::Malformed { reason } => format!("ca_file {path}: {reason}"),
            CaFileProblem::UnusableCertificate { reason } => {
                format!("ca_file {path}: unusable certificate: {reason}")
            }
            CaFileProblem::NoCertificate => format!("ca_file {path} holds no PEM certificate"),
        }
    }
}

/// Why the server refused a bind. `server`: what the server said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindRefusal {
    /// Wrong DN or password (or a locked or expired account).
    InvalidCredentials,
    /// The server binds only over TLS.
    EncryptionRequired { server: String },
    /// The account may not use a simple bind, or the server is unwilling.
    SimpleBindNotAllowed { server: String },
    /// Any other result.
    Other { server: String },
}

impl BindRefusal {
    /// What to do about the refusal; `password_source` names where the
    /// password comes from.
    fn hint(&self, password_source: &str) -> Cow<'static, str> {
        let text = match self {
            BindRefusal::InvalidCredentials => {
                return format!(
                    "check bind_dn and the password in {password_source} (and that the \
                     account is not locked or expired)"
                )
                .into();
            }
            BindRefusal::EncryptionRequired { .. } => "use an ldaps:// URL or set `starttls: true`",
            BindRefusal::SimpleBindNotAllowed { .. } => {
                "the account may not use a simple bind (or is disabled); check it with the \
                 directory's administrators"
            }
            BindRefusal::Other { .. } => "check bind_dn and the password, then run `idsync check`",
        };
        Cow::Borrowed(text)
    }
}

impl fmt::Display for BindRefusal {
    /// Follows "bind as DN ".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindRefusal::InvalidCredentials => f.write_str("refused: invalid credentials"),
            BindRefusal::EncryptionRequired { server } => write!(
                f,
                "refused: the server requires an encrypted connection ({server})"
            ),
            BindRefusal::SimpleBindNotAllowed { server } => write!(f, "refused: {server}"),
            BindRefusal::Other { server } => write!(f, "failed: {server}"),
        }
    }
}

/// The server limit that cut a search short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SearchLimit {
    Size,
    Time,
    Admin,
}

impl SearchLimit {
    /// What to do about the limit.
    fn hint(self) -> &'static str {
        match self {
            SearchLimit::Size => {
                "the service account's limit applies to paged searches too: set page_size at or \
                 below the server's limit, or have the limit for paged searches raised \
                 (OpenLDAP: size.pr/size.prtotal; AD: MaxPageSize)"
            }
            SearchLimit::Time => {
                "have the service account's time limit raised, or narrow user_filter / the base \
                 DNs"
            }
            SearchLimit::Admin => {
                "have the server's limits for the service account raised (AD: MaxResultSetSize)"
            }
        }
    }
}

impl fmt::Display for SearchLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SearchLimit::Size => "size limit exceeded",
            SearchLimit::Time => "time limit exceeded",
            SearchLimit::Admin => "administrative limit exceeded",
        })
    }
}

/// The LDAP operation a timeout or a lost connection interrupted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LdapOperation {
    Bind,
    /// The paged subtree search under `base`.
    Search {
        base: String,
    },
    /// The base-scope read of one entry.
    ReadEntry {
        dn: String,
    },
    /// `check`'s one-entry search under `base`.
    SampleSearch {
        base: String,
    },
}

impl fmt::Display for LdapOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LdapOperation::Bind => f.write_str("the bind"),
            LdapOperation::Search { base } => write!(f, "the search of {base}"),
            LdapOperation::ReadEntry { dn } => write!(f, "the read of {dn}"),
            LdapOperation::SampleSearch { base } => write!(f, "the sample search under {base}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::escape_filter_value;

    #[test]
    fn a_filter_value_escapes_what_a_filter_gives_meaning() {
        assert_eq!(escape_filter_value("k1"), "k1");
        assert_eq!(escape_filter_value("a*(b)\\c"), "a\\2a\\28b\\29\\5cc");
    }
}
