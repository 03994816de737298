//! What can go wrong reading a source, as data: [`SourceError`] says what went
//! wrong and with what (the file and line, the server and DN), renders the text
//! an operator sees, and knows whether the data is wrong (fix the data, exit 2)
//! or the source could not be read (exit 5). [`SourceConfigError`] is a mistake
//! in an adapter's configuration section, located at the offending field.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::report::{quote, show};
use crate::secret::{Problem, SecretFileError};

/// Reports at most this many record problems; the rest are counted.
const MAX_PROBLEMS: usize = 50;

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
    // -- CSV: the file is wrong ----------------------------------------------
    /// The configured path is a folder, not a file.
    #[error("{} is a folder, not a CSV file", .file.display())]
    IsAFolder { file: PathBuf },
    /// The file has no header row (or is empty).
    #[error("{}: the file is empty or has no header row", .file.display())]
    NoHeader { file: PathBuf },
    /// A header field is not UTF-8; `column` is 1-based.
    #[error(
        "{}: the header row is not valid UTF-8\n{} line 1: column {column} is not UTF-8",
        .file.display(),
        file_name(.file)
    )]
    HeaderNotUtf8 { file: PathBuf, column: usize },
    /// A row the CSV reader cannot make sense of, where reading has to stop.
    #[error(
        "{}: line {line} is malformed; nothing was planned or changed\n{} line {line}: {fault}",
        .file.display(),
        file_name(.file)
    )]
    MalformedRow {
        file: PathBuf,
        line: u64,
        fault: CsvFault,
    },
    /// The users file has no column named like the configured key.
    #[error(
        "{}: there is no key column {}\n{} line 1: the columns are {}",
        .file.display(),
        quote(.key),
        file_name(.file),
        column_list(.columns)
    )]
    MissingKeyColumn {
        file: PathBuf,
        key: String,
        columns: Vec<String>,
    },
    /// Two header fields name the same column (case-insensitively).
    #[error(
        "{}: the column {} appears twice in the header\n{} line 1: the columns are {}",
        .file.display(),
        quote(.column),
        file_name(.file),
        column_list(.columns)
    )]
    DuplicateColumn {
        file: PathBuf,
        column: String,
        columns: Vec<String>,
    },
    /// The groups file lacks `group` or `member`.
    #[error(
        "{}: a groups file needs the columns `group,member`\n{} line 1: the columns are {}",
        .file.display(),
        file_name(.file),
        column_list(.columns)
    )]
    MissingGroupColumns { file: PathBuf, columns: Vec<String> },
    /// Rows that cannot become records, all of them at once: the first
    /// `problems` in file order, and how many `more` were not listed.
    #[error("{}", bad_rows(.file, .problems, *.more))]
    BadRows {
        file: PathBuf,
        problems: Vec<RowProblem>,
        more: usize,
    },

    // -- CSV: the file cannot be read ----------------------------------------
    #[error("cannot read {}: {source}", .file.display())]
    FileUnreadable {
        file: PathBuf,
        source: std::io::Error,
    },
    /// The file was rewritten while idsync read it (seen when a part had to be
    /// read again): nothing is judged from two versions.
    #[error("{} changed while it was read; nothing was planned, and the next cycle reads it again", .file.display())]
    FileChanged { file: PathBuf },
    /// The blocking reader task ended without an answer (a bug).
    #[error("the CSV reader stopped unexpectedly: {reason}")]
    ReaderStopped { reason: String },

    // -- LDAP: the entries are wrong -----------------------------------------
    /// User entries without a usable key, or with another user's key.
    #[error("{}", .0.render("users"))]
    BadUsers(Box<BadEntries>),
    /// Group entries without a usable key or a name, or with another group's key.
    #[error("{}", .0.render("groups"))]
    BadGroups(Box<BadEntries>),

    // -- LDAP: the bind password ---------------------------------------------
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

    // -- LDAP: TLS and the connection ----------------------------------------
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

    // -- LDAP: searches ------------------------------------------------------
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

    // -- Entra ID (Microsoft Graph) ---------------------------------------------
    #[error("the Entra client secret variable {var} is not set")]
    EntraSecretNotSet { var: String },
    /// `client_secret_file`, `private_key_file` or `certificate_file` cannot be
    /// used; `problem` says why (never its content).
    #[error("Entra client secret file {}: {problem}", .path.display())]
    EntraSecretFile { path: PathBuf, problem: String },
    /// The token endpoint refused the credential. `reason` is what it said
    /// (Entra's `error` and `error_description`), never the secret.
    /// `credential` says where the credential comes from, never its value.
    #[error("Entra ID refused {credential} of client {client_id} in tenant {tenant}: {reason}")]
    EntraAuthRefused {
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

impl SourceError {
    /// The bind password file refused by the secret-file rule.
    pub fn password_file(e: SecretFileError) -> SourceError {
        match e.problem {
            Problem::Unreadable(source) => SourceError::PasswordFileUnreadable {
                path: e.path,
                source,
            },
            Problem::Exposed { mode } => SourceError::PasswordFileExposed { path: e.path, mode },
            _ => SourceError::PasswordFileRefused(e),
        }
    }

    /// True when the source could not be read (a missing file, an unreachable
    /// server, a refused bind, a cut-short search: exit 5); false when it was
    /// read and the data is wrong (exit 2).
    pub fn is_unavailable(&self) -> bool {
        use SourceError::*;
        match self {
            IsAFolder { .. }
            | NoHeader { .. }
            | HeaderNotUtf8 { .. }
            | MalformedRow { .. }
            | MissingKeyColumn { .. }
            | DuplicateColumn { .. }
            | MissingGroupColumns { .. }
            | BadRows { .. }
            | BadUsers(_)
            | BadGroups(_) => false,
            FileUnreadable { .. }
            | FileChanged { .. }
            | ReaderStopped { .. }
            | PasswordNotSet { .. }
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
            | PartialMemberRange { .. }
            | EntraSecretNotSet { .. }
            | EntraSecretFile { .. }
            | EntraAuthRefused { .. }
            | GraphUnreachable { .. }
            | GraphRefused { .. }
            | GraphThrottled { .. }
            | GraphBadAnswer { .. } => true,
        }
    }

    /// What the operator should do next.
    pub fn hint(&self) -> Cow<'static, str> {
        use SourceError::*;
        const FIX_ROWS: &str = "fix the rows listed above, then run again; nothing was changed";
        const CHECK_BASES: &str = "check base_dn, user_base_dn and group_base_dn";
        let text: &'static str = match self {
            IsAFolder { .. } => "point source.users (or source.groups) at the CSV file itself",
            NoHeader { .. } => "the first row must name the columns (id,email,given_name,…)",
            HeaderNotUtf8 { .. } => "save the file as UTF-8",
            MalformedRow { .. } => {
                "fix the row (fields with commas, quotes or line breaks must be quoted, \"\" \
                 inside quotes), then run again"
            }
            MissingKeyColumn { .. } => {
                "name the stable key column `id`, or set `source.key` to its name"
            }
            DuplicateColumn { .. } => "give every column a distinct name",
            MissingGroupColumns { .. } => {
                "one membership per row: group,member (member = a user's key)"
            }
            BadRows { .. } => FIX_ROWS,
            FileUnreadable { .. } => {
                "check the source paths in the config (relative to the config file's folder)"
            }
            FileChanged { .. } => {
                "have the export write a temporary file and rename it into place, so a read never meets a file half-written"
            }
            ReaderStopped { .. } => "this is a bug; please report it",
            BadUsers(bad) => {
                return format!(
                    "every user needs exactly one {} and keys must be unique; fix the entries, \
                     or narrow user_filter to exclude them",
                    bad.key_attribute
                )
                .into();
            }
            BadGroups(bad) => {
                return format!(
                    "every group needs one {} and a {}; fix the entries, or narrow \
                     group_filter to exclude them",
                    bad.key_attribute,
                    bad.name_attribute.as_deref().unwrap_or("name")
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
            } => match reason {
                BindRefusal::InvalidCredentials => {
                    return format!(
                        "check bind_dn and the password in {password_source} (and that the \
                         account is not locked or expired)"
                    )
                    .into();
                }
                BindRefusal::EncryptionRequired { .. } => {
                    "use an ldaps:// URL or set `starttls: true`"
                }
                BindRefusal::SimpleBindNotAllowed { .. } => {
                    "the account may not use a simple bind (or is disabled); check it with the \
                     directory's administrators"
                }
                BindRefusal::Other { .. } => {
                    "check bind_dn and the password, then run `idsync check`"
                }
            },
            LimitExceeded { limit, .. } => match limit {
                SearchLimit::Size => {
                    "the service account's limit applies to paged searches too: set page_size \
                     at or below the server's limit, or have the limit for paged searches \
                     raised (OpenLDAP: size.pr/size.prtotal; AD: MaxPageSize)"
                }
                SearchLimit::Time => {
                    "have the service account's time limit raised, or narrow user_filter / the \
                     base DNs"
                }
                SearchLimit::Admin => {
                    "have the server's limits for the service account raised (AD: \
                     MaxResultSetSize)"
                }
            },
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
            EntraSecretNotSet { var } => {
                return format!(
                    "export {var}=<the app registration's client secret> before running idsync"
                )
                .into();
            }
            EntraSecretFile { path, .. } => {
                return format!(
                    "make {} a regular file holding the credential, owned by idsync's user, chmod 600 (group and others must not read it), in a folder only that user can write to",
                    path.display()
                )
                .into();
            }
            EntraAuthRefused { .. } => {
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

/// Why a CSV row could not be read at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CsvFault {
    /// The row has another number of fields than the header.
    FieldCount { found: u64, expected: u64 },
    /// Reading the file failed part-way.
    Unreadable { reason: String },
    /// Anything else the CSV reader refused.
    Other { reason: String },
}

impl fmt::Display for CsvFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CsvFault::FieldCount { found, expected } => {
                write!(f, "has {found} fields where the header has {expected}")
            }
            CsvFault::Unreadable { reason } => write!(f, "cannot be read: {reason}"),
            CsvFault::Other { reason } => f.write_str(reason),
        }
    }
}

/// Why one CSV row cannot become a record. `line` is the row's 1-based line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowProblem {
    /// The row broke the file's structure; rows after it were not read.
    Malformed { line: u64, fault: CsvFault },
    /// A value that is not UTF-8, in the column named `column`.
    NotUtf8 { line: u64, column: String },
    /// The key column is empty.
    EmptyKey { line: u64, key_column: String },
    /// The key was already used on `first_line`.
    DuplicateKey {
        line: u64,
        key: String,
        first_line: u64,
    },
    /// A groups-file row with no group name.
    EmptyGroupName { line: u64 },
    /// A group id named differently on two rows.
    GroupNameConflict {
        line: u64,
        id: String,
        name: String,
        first_name: String,
        first_line: u64,
    },
}

impl RowProblem {
    pub fn line(&self) -> u64 {
        match self {
            RowProblem::Malformed { line, .. }
            | RowProblem::NotUtf8 { line, .. }
            | RowProblem::EmptyKey { line, .. }
            | RowProblem::DuplicateKey { line, .. }
            | RowProblem::EmptyGroupName { line }
            | RowProblem::GroupNameConflict { line, .. } => *line,
        }
    }

    /// The problem as one line of a report on `file` (a file name).
    pub fn render(&self, file: &str) -> String {
        let line = self.line();
        let what = match self {
            RowProblem::Malformed { fault, .. } => fault.to_string(),
            RowProblem::NotUtf8 { column, .. } => {
                format!("column {} is not valid UTF-8", quote(column))
            }
            RowProblem::EmptyKey { key_column, .. } => {
                format!("the key column {} is empty", quote(key_column))
            }
            RowProblem::DuplicateKey {
                key, first_line, ..
            } => format!(
                "key {} is already used on {file} line {first_line}; keys must be unique",
                quote(key)
            ),
            RowProblem::EmptyGroupName { .. } => "the group name is empty".to_string(),
            RowProblem::GroupNameConflict {
                id,
                name,
                first_name,
                first_line,
                ..
            } => format!(
                "group {} is named {} here but {} on line {first_line}",
                quote(id),
                quote(name),
                quote(first_name)
            ),
        };
        format!("{file} line {line}: {what}")
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

/// Collects record problems so the operator sees them all at once, not one per
/// run: the first `MAX_PROBLEMS`, and a count of the rest.
pub(crate) struct Problems<T> {
    listed: Vec<T>,
    more: usize,
}

impl<T> Default for Problems<T> {
    fn default() -> Self {
        Problems {
            listed: Vec::new(),
            more: 0,
        }
    }
}

impl<T> Problems<T> {
    pub(crate) fn push(&mut self, problem: T) {
        if self.listed.len() < MAX_PROBLEMS {
            self.listed.push(problem);
        } else {
            self.more += 1;
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.listed.is_empty()
    }

    /// The listed problems and how many more there were.
    pub(crate) fn into_parts(self) -> (Vec<T>, usize) {
        (self.listed, self.more)
    }
}

/// The name of a file, for the lines of a report.
pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn bad_rows(file: &Path, problems: &[RowProblem], more: usize) -> String {
    let name = file_name(file);
    let listed = problems.iter().map(|p| p.render(&name));
    render_list(&file.display().to_string(), listed, more)
}

/// A header's column names, each shown escaped (a quoted header field may
/// hold a line break).
fn column_list(list: &[String]) -> String {
    list.iter().map(|c| show(c)).collect::<Vec<_>>().join(", ")
}

/// "`what`: N problems found; …", then one listed problem per line, then how
/// many were left out.
fn render_list(what: &str, listed: impl ExactSizeIterator<Item = String>, more: usize) -> String {
    let total = listed.len() + more;
    let mut out = format!(
        "{what}: {total} problem{} found; nothing was planned or changed",
        if total == 1 { "" } else { "s" }
    );
    for line in listed {
        out.push('\n');
        out.push_str(&line);
    }
    if more > 0 {
        out.push_str(&format!("\n… and {more} more"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unreadable_sources_are_unavailable() {
        let data = SourceError::BadRows {
            file: "users.csv".into(),
            problems: vec![],
            more: 0,
        };
        assert!(!data.is_unavailable());
        let down = SourceError::ConnectFailed {
            url: "ldap://h".into(),
            reason: "refused".into(),
        };
        assert!(down.is_unavailable());
    }

    #[test]
    fn a_long_list_of_problems_is_cut_and_counted() {
        let mut problems = Problems::default();
        for line in 2..(MAX_PROBLEMS as u64 + 5) {
            problems.push(RowProblem::EmptyGroupName { line });
        }
        let (problems, more) = problems.into_parts();
        assert_eq!((problems.len(), more), (MAX_PROBLEMS, 3));
        let text = SourceError::BadRows {
            file: "/data/groups.csv".into(),
            problems,
            more,
        }
        .to_string();
        assert!(
            text.starts_with("/data/groups.csv: 53 problems found; nothing was planned"),
            "{text}"
        );
        assert!(
            text.contains("\ngroups.csv line 2: the group name is empty\n"),
            "{text}"
        );
        assert!(text.ends_with("\n… and 3 more"), "{text}");
    }
}
