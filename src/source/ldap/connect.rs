//! The connection: TLS set-up (system roots, an extra CA file, or — only when
//! asked — no verification), bind, paged searches with a timeout per operation,
//! and the translation of every failure into an `LdapError` that says whether
//! the server was unreachable, TLS failed, the bind was refused, a base DN is
//! missing or the server cut the read short.

use std::sync::Arc;

use ldap3::LdapError as ClientError;
use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapResult, Scope, SearchEntry};
use secrecy::ExposeSecret;

use super::entry::Entry;
use super::error::{BindRefusal, CaFileProblem, LdapError, LdapOperation, SearchLimit};
use super::{LdapSettings, TlsVerify};

/// Connects and binds.
pub(super) async fn open(settings: &LdapSettings) -> Result<Ldap, LdapError> {
    let password = settings.password.read()?;
    let mut conn_settings = LdapConnSettings::new()
        .set_conn_timeout(settings.timeout)
        .set_starttls(settings.starttls);
    match &settings.tls {
        TlsVerify::System => {}
        TlsVerify::CaFile(path) => {
            conn_settings = conn_settings.set_config(Arc::new(client_config(path)?));
        }
        TlsVerify::Skip => {
            tracing::warn!(
                url = %settings.url,
                "TLS certificate verification is OFF (danger_skip_tls_verify): anyone on the \
                 network path can impersonate the directory and capture the bind password"
            );
            conn_settings = conn_settings.set_no_tls_verify(true);
        }
    }
    let (conn, mut ldap) = LdapConnAsync::with_settings(conn_settings, &settings.url)
        .await
        .map_err(|e| connect_error(settings, e))?;
    ldap3::drive!(conn);
    ldap.with_timeout(settings.timeout);
    let result = ldap
        .simple_bind(&settings.bind_dn, password.expose_secret())
        .await
        .map_err(|e| lost(settings, LdapOperation::Bind, e))?;
    if result.rc != 0 {
        return Err(bind_error(settings, &result));
    }
    Ok(ldap)
}

/// Unbinds, best effort: the read is complete whatever happens here.
pub(super) async fn close(mut ldap: Ldap) {
    if let Err(e) = ldap.unbind().await {
        tracing::debug!(error = %e, "LDAP unbind failed");
    }
}

/// A rustls configuration trusting the system's roots plus the CAs in `path`.
fn client_config(path: &std::path::Path) -> Result<rustls::ClientConfig, LdapError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let ca_error = |problem: CaFileProblem| LdapError::CaFile {
        path: path.to_path_buf(),
        problem,
    };
    let mut roots = rustls::RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(system.certs);
    let mut added = 0;
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
        ca_error(CaFileProblem::Unreadable {
            reason: e.to_string(),
        })
    })?;
    for cert in certs {
        let cert = cert.map_err(|e| {
            ca_error(CaFileProblem::Malformed {
                reason: e.to_string(),
            })
        })?;
        roots.add(cert).map_err(|e| {
            ca_error(CaFileProblem::UnusableCertificate {
                reason: e.to_string(),
            })
        })?;
        added += 1;
    }
    if added == 0 {
        return Err(ca_error(CaFileProblem::NoCertificate));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LdapError::TlsSetup {
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Runs a paged subtree search and hands each entry to `each` as it arrives.
/// Only a complete, successful search returns `Ok`.
pub(super) async fn search_each(
    ldap: &mut Ldap,
    settings: &LdapSettings,
    base: &str,
    filter: &str,
    attributes: Vec<String>,
    mut each: impl FnMut(Entry),
) -> Result<usize, LdapError> {
    // EntriesOnly drops referrals and intermediate messages, which are not
    // entries; PagedResults fetches every page.
    let adapters: Vec<Box<dyn Adapter<'_, String, Vec<String>>>> = vec![
        Box::new(EntriesOnly::new()),
        Box::new(PagedResults::new(settings.page_size)),
    ];
    ldap.with_timeout(settings.timeout);
    let what = || LdapOperation::Search {
        base: base.to_string(),
    };
    let mut stream = ldap
        .streaming_search_with(adapters, base, Scope::Subtree, filter, attributes)
        .await
        .map_err(|e| lost(settings, what(), e))?;
    let mut count = 0usize;
    loop {
        match stream.next().await {
            Ok(Some(entry)) => {
                let Some(entry) = Entry::decode(entry) else {
                    let _ = stream.finish().await;
                    return Err(malformed(settings, what()));
                };
                each(entry);
                count += 1;
            }
            Ok(None) => break,
            Err(e) => {
                let _ = stream.finish().await;
                return Err(lost(settings, what(), e));
            }
        }
    }
    let result = stream.finish().await;
    if result.rc != 0 {
        return Err(search_error(settings, base, count, &result));
    }
    if !result.refs.is_empty() {
        // Continuation references: AD names its DNS and configuration partitions
        // this way under a domain root (they hold no users). Not followed: another
        // server, other credentials. Not an error either: even when no entry came
        // back, a domain may simply have no groups. A base DN that is itself
        // elsewhere is an error (result code referral, above).
        tracing::info!(
            base,
            references = ?result.refs,
            "the server referred parts of the search to other servers; not followed"
        );
    }
    tracing::debug!(base, entries = count, "LDAP search complete");
    Ok(count)
}

/// Reads one entry (a base-scope search), `None` when the server returns none.
pub(super) async fn read_entry(
    ldap: &mut Ldap,
    settings: &LdapSettings,
    dn: &str,
    attributes: Vec<String>,
) -> Result<Option<Entry>, LdapError> {
    let result = ldap
        .with_timeout(settings.timeout)
        .search(dn, Scope::Base, "(objectClass=*)", attributes)
        .await
        .map_err(|e| {
            let operation = LdapOperation::ReadEntry { dn: dn.to_string() };
            lost(settings, operation, e)
        })?;
    let ldap3::SearchResult(entries, result) = result;
    if result.rc != 0 {
        return Err(search_error(settings, dn, 0, &result));
    }
    match entries.into_iter().next() {
        None => Ok(None),
        Some(raw) => match Entry::decode(raw) {
            Some(entry) => Ok(Some(entry)),
            None => Err(malformed(
                settings,
                LdapOperation::ReadEntry { dn: dn.to_string() },
            )),
        },
    }
}

/// The rootDSE's `supportedCapabilities`. A connection that fails is an
/// error (a read must not change its defaults because of a hiccup); a server
/// that refuses to show the rootDSE, or has none, gives nothing.
pub(super) async fn root_capabilities(
    ldap: &mut Ldap,
    settings: &LdapSettings,
) -> Result<Vec<String>, LdapError> {
    let wanted = vec!["supportedCapabilities"];
    let ldap3::SearchResult(entries, result) = ldap
        .with_timeout(settings.timeout)
        .search("", Scope::Base, "(objectClass=*)", wanted)
        .await
        .map_err(|e| {
            let operation = LdapOperation::ReadEntry {
                dn: "(the rootDSE)".into(),
            };
            lost(settings, operation, e)
        })?;
    if result.rc != 0 {
        tracing::debug!(server = %server_says(&result), "the rootDSE is not readable");
        return Ok(Vec::new());
    }
    Ok(entries
        .into_iter()
        .map(SearchEntry::construct)
        .flat_map(|e| e.attrs)
        .filter(|(name, _)| name.eq_ignore_ascii_case("supportedCapabilities"))
        .flat_map(|(_, values)| values)
        .collect())
}

/// Proves that `base` exists and is visible to the bind DN.
pub(super) async fn base_exists(
    ldap: &mut Ldap,
    settings: &LdapSettings,
    base: &str,
) -> Result<(), LdapError> {
    match read_entry(ldap, settings, base, vec!["1.1".into()]).await? {
        Some(_) => Ok(()),
        None => Err(base_not_found(settings, base)),
    }
}

/// Runs the first page (one entry) of a search with the paged-results control:
/// proves the filter is accepted, the account may search under `base`, and
/// paged searches are allowed. Returns how many entries that page held (0 or 1).
pub(super) async fn first_page(
    ldap: &mut Ldap,
    settings: &LdapSettings,
    base: &str,
    filter: &str,
) -> Result<usize, LdapError> {
    let control: ldap3::controls::RawControl = ldap3::controls::PagedResults {
        size: 1,
        cookie: Vec::new(),
    }
    .into();
    let result = ldap
        .with_timeout(settings.timeout)
        .with_controls(vec![control])
        .search(base, Scope::Subtree, filter, vec!["1.1"])
        .await
        .map_err(|e| {
            let operation = LdapOperation::SampleSearch {
                base: base.to_string(),
            };
            lost(settings, operation, e)
        })?;
    let ldap3::SearchResult(entries, result) = result;
    if result.rc != 0 {
        return Err(search_error(settings, base, entries.len(), &result));
    }
    Ok(entries.len())
}

/// Result codes of RFC 4511 appendix A that need their own message.
mod rc {
    pub const TIME_LIMIT: u32 = 3;
    pub const SIZE_LIMIT: u32 = 4;
    pub const AUTH_METHOD_NOT_SUPPORTED: u32 = 7;
    pub const STRONGER_AUTH_REQUIRED: u32 = 8;
    pub const REFERRAL: u32 = 10;
    pub const ADMIN_LIMIT: u32 = 11;
    pub const UNAVAILABLE_CRITICAL_EXTENSION: u32 = 12;
    pub const CONFIDENTIALITY_REQUIRED: u32 = 13;
    pub const NO_SUCH_OBJECT: u32 = 32;
    pub const INVALID_DN_SYNTAX: u32 = 34;
    pub const INAPPROPRIATE_AUTH: u32 = 48;
    pub const INVALID_CREDENTIALS: u32 = 49;
    pub const INSUFFICIENT_ACCESS: u32 = 50;
    pub const BUSY: u32 = 51;
    pub const UNAVAILABLE: u32 = 52;
    pub const UNWILLING: u32 = 53;
}

fn server_says(result: &LdapResult) -> String {
    let text = result.text.trim();
    if text.is_empty() {
        format!("{result}")
    } else {
        format!("{text} ({result})")
    }
}

fn base_not_found(settings: &LdapSettings, base: &str) -> LdapError {
    LdapError::BaseNotFound {
        url: settings.url.clone(),
        base: base.to_string(),
        bind_dn: settings.bind_dn.clone(),
    }
}

/// The TLS error inside `e`, if it is one.
fn tls_cause(e: &ClientError) -> Option<String> {
    match e {
        ClientError::Rustls { source } => Some(source.to_string()),
        ClientError::DNSName { source } => Some(source.to_string()),
        ClientError::Io { source } => source
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(ToString::to_string),
        _ => None,
    }
}

/// The rustls error inside `e`, if it is one.
fn rustls_error(e: &ClientError) -> Option<&rustls::Error> {
    match e {
        ClientError::Rustls { source } => Some(source),
        ClientError::Io { source } => source
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        _ => None,
    }
}

/// True when the server's certificate chain verified but the certificate names
/// no host at all (no subjectAltName).
fn names_no_host(e: &ClientError) -> bool {
    use rustls::CertificateError;
    matches!(
        rustls_error(e),
        Some(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForNameContext { presented, .. }
        )) if presented.is_empty()
    )
}

fn connect_error(settings: &LdapSettings, e: ClientError) -> LdapError {
    let url = settings.url.clone();
    if names_no_host(&e) {
        let host = url::Url::parse(&url)
            .ok()
            .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()))
            .unwrap_or_default();
        return LdapError::TlsCertificateWithoutNames { url, host };
    }
    if let Some(reason) = tls_cause(&e) {
        return LdapError::TlsHandshake {
            url,
            reason,
            with_ca_file: matches!(settings.tls, TlsVerify::CaFile(_)),
        };
    }
    match e {
        ClientError::Timeout { .. } => LdapError::ConnectTimeout {
            url,
            timeout: settings.timeout,
        },
        ClientError::LdapResult { result } if settings.starttls => LdapError::StartTlsRefused {
            url,
            server: server_says(&result),
        },
        other => LdapError::ConnectFailed {
            url,
            reason: other.to_string(),
        },
    }
}

fn bind_error(settings: &LdapSettings, result: &LdapResult) -> LdapError {
    let reason = match result.rc {
        rc::INVALID_CREDENTIALS => BindRefusal::InvalidCredentials,
        rc::CONFIDENTIALITY_REQUIRED | rc::STRONGER_AUTH_REQUIRED => {
            BindRefusal::EncryptionRequired {
                server: server_says(result),
            }
        }
        rc::INAPPROPRIATE_AUTH | rc::AUTH_METHOD_NOT_SUPPORTED | rc::UNWILLING => {
            BindRefusal::SimpleBindNotAllowed {
                server: server_says(result),
            }
        }
        _ => BindRefusal::Other {
            server: server_says(result),
        },
    };
    LdapError::BindRefused {
        url: settings.url.clone(),
        dn: settings.bind_dn.clone(),
        reason,
        password_source: settings.password.describe(),
    }
}

/// A search that ended with a non-success result: never a partial directory.
fn search_error(
    settings: &LdapSettings,
    base: &str,
    entries: usize,
    result: &LdapResult,
) -> LdapError {
    let url = settings.url.clone();
    let server = server_says(result);
    let limit = |limit: SearchLimit| LdapError::LimitExceeded {
        url: url.clone(),
        base: base.to_string(),
        entries,
        limit,
        server: server.clone(),
    };
    match result.rc {
        rc::SIZE_LIMIT => limit(SearchLimit::Size),
        rc::TIME_LIMIT => limit(SearchLimit::Time),
        rc::ADMIN_LIMIT => limit(SearchLimit::Admin),
        rc::NO_SUCH_OBJECT => base_not_found(settings, base),
        rc::INVALID_DN_SYNTAX => LdapError::InvalidBaseDn {
            url,
            base: base.to_string(),
            server,
        },
        rc::REFERRAL => LdapError::Referral {
            url,
            base: base.to_string(),
            refs: result.refs.clone(),
        },
        rc::UNAVAILABLE_CRITICAL_EXTENSION => LdapError::PagingUnsupported { url, server },
        rc::INSUFFICIENT_ACCESS => LdapError::AccessDenied {
            url,
            bind_dn: settings.bind_dn.clone(),
            base: base.to_string(),
            server,
        },
        rc::BUSY | rc::UNAVAILABLE => LdapError::ServerBusy { url, server },
        _ => LdapError::SearchFailed {
            url,
            base: base.to_string(),
            entries,
            server,
        },
    }
}

/// The server answered `operation` with an entry that is not a well-formed
/// SearchResultEntry (a DN or attribute name that is not UTF-8).
fn malformed(settings: &LdapSettings, operation: LdapOperation) -> LdapError {
    LdapError::ConnectionLost {
        url: settings.url.clone(),
        operation,
        reason: "the server sent a malformed search result entry".into(),
    }
}

/// The connection failed in the middle of `operation`.
fn lost(settings: &LdapSettings, operation: LdapOperation, e: ClientError) -> LdapError {
    let url = settings.url.clone();
    match e {
        ClientError::Timeout { .. } => LdapError::NoAnswer {
            url,
            operation,
            timeout: settings.timeout,
        },
        other => LdapError::ConnectionLost {
            url,
            operation,
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::source::ldap::LdapConfig;

    fn settings() -> LdapSettings {
        let yaml = "url: ldap://dc1.corp.example\nbind_dn: cn=sync,dc=corp\n\
                    bind_password_env: PW\nbase_dn: dc=corp\n";
        let config: LdapConfig = serde_saphyr::from_str(yaml).unwrap();
        config.compile(Path::new("/")).unwrap()
    }

    #[test]
    fn a_cycle_reads_ldap_on_the_reading_thread_alone() {
        use crate::source::Source;
        // Each read opens and closes its own connection, so no client of the
        // read outlives the runtime it runs on.
        assert!(settings().reads_on_one_thread());
    }

    fn result(rc: u32, text: &str, refs: &[&str]) -> LdapResult {
        LdapResult {
            rc,
            matched: String::new(),
            text: text.into(),
            refs: refs.iter().map(|r| r.to_string()).collect(),
            ctrls: vec![],
        }
    }

    #[test]
    fn limits_are_failed_reads_with_a_hint() {
        let err = search_error(&settings(), "dc=corp", 1000, &result(4, "", &[]));
        assert!(
            matches!(
                &err,
                LdapError::LimitExceeded {
                    base,
                    entries: 1000,
                    limit: SearchLimit::Size,
                    ..
                } if base == "dc=corp"
            ),
            "{err:?}"
        );
        assert!(err.is_unavailable());
        // What the operator sees.
        let text = err.to_string();
        assert!(
            text.starts_with(
                "LDAP ldap://dc1.corp.example: the server stopped the search of dc=corp after \
                 1000 entries (size limit exceeded: "
            ),
            "{text}"
        );
        assert!(text.ends_with("nothing was planned"), "{text}");
        assert!(err.hint().contains("page_size"), "{}", err.hint());
        assert!(matches!(
            search_error(&settings(), "dc=corp", 7, &result(3, "", &[])),
            LdapError::LimitExceeded {
                limit: SearchLimit::Time,
                ..
            }
        ));
        assert!(matches!(
            search_error(&settings(), "dc=corp", 7, &result(11, "", &[])),
            LdapError::LimitExceeded {
                limit: SearchLimit::Admin,
                ..
            }
        ));
    }

    #[test]
    fn missing_bases_referrals_and_bind_refusals_are_told_apart() {
        let err = search_error(&settings(), "ou=x,dc=corp", 0, &result(32, "", &[]));
        assert!(
            matches!(&err, LdapError::BaseNotFound { base, bind_dn, .. }
                if base == "ou=x,dc=corp" && bind_dn == "cn=sync,dc=corp"),
            "{err:?}"
        );
        assert!(err.hint().contains("base_dn"), "{}", err.hint());
        let refs = ["ldap://dc9.other.example/dc=other"];
        let err = search_error(&settings(), "dc=other", 0, &result(10, "", &refs));
        assert!(
            matches!(&err, LdapError::Referral { refs, .. } if refs == &["ldap://dc9.other.example/dc=other"]),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("referred the search to ldap://dc9.other.example/dc=other"),
            "{err}"
        );
        let err = bind_error(
            &settings(),
            &result(49, "80090308: AcceptSecurityContext error", &[]),
        );
        assert!(
            matches!(&err, LdapError::BindRefused {
                dn,
                reason: BindRefusal::InvalidCredentials,
                ..
            } if dn == "cn=sync,dc=corp"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "LDAP ldap://dc1.corp.example: bind as cn=sync,dc=corp refused: invalid credentials"
        );
        assert!(err.hint().contains("the variable PW"), "{}", err.hint());
        let err = bind_error(&settings(), &result(13, "confidentiality required", &[]));
        assert!(
            matches!(
                err,
                LdapError::BindRefused {
                    reason: BindRefusal::EncryptionRequired { .. },
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.hint().contains("starttls"), "{}", err.hint());
        assert!(matches!(
            bind_error(&settings(), &result(53, "", &[])),
            LdapError::BindRefused {
                reason: BindRefusal::SimpleBindNotAllowed { .. },
                ..
            }
        ));
        assert!(matches!(
            search_error(&settings(), "dc=corp", 0, &result(50, "", &[])),
            LdapError::AccessDenied { .. }
        ));
        assert!(matches!(
            search_error(&settings(), "dc=corp", 0, &result(12, "", &[])),
            LdapError::PagingUnsupported { .. }
        ));
    }

    #[test]
    fn unusable_ca_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = client_config(&missing).unwrap_err();
        assert!(
            matches!(
                &err,
                LdapError::CaFile {
                    problem: CaFileProblem::Unreadable { .. },
                    path
                } if path == &missing
            ),
            "{err:?}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(&empty).unwrap_err();
        assert!(
            matches!(
                err,
                LdapError::CaFile {
                    problem: CaFileProblem::NoCertificate,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("ca_file {} holds no PEM certificate", empty.display())
        );
        assert!(err.hint().contains("PEM"), "{}", err.hint());
    }
}
