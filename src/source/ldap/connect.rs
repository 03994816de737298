//! The connection: TLS set-up (system roots, an extra CA file, or — only when
//! asked — no verification), bind, paged searches with a timeout per operation,
//! and the translation of every failure into a `SourceError` that says whether
//! the server was unreachable, TLS failed, the bind was refused, a base DN is
//! missing or the server cut the read short.

use std::sync::Arc;

use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, LdapResult, Scope, SearchEntry};
use secrecy::ExposeSecret;

use super::{LdapSettings, SourceError, TlsVerify};

/// Connects and binds.
pub(super) async fn open(settings: &LdapSettings) -> Result<Ldap, SourceError> {
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
        .map_err(|e| lost(settings, "the bind", e))?;
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
fn client_config(path: &std::path::Path) -> Result<rustls::ClientConfig, SourceError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let tls_error = |message: String| SourceError::Unavailable {
        message,
        hint: "ca_file must be a PEM file with the certificate of the CA that signed the \
               directory server's certificate"
            .into(),
    };
    let mut roots = rustls::RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(system.certs);
    let mut added = 0;
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error(format!("cannot read ca_file {}: {e}", path.display())))?;
    for cert in certs {
        let cert = cert.map_err(|e| tls_error(format!("ca_file {}: {e}", path.display())))?;
        roots.add(cert).map_err(|e| {
            tls_error(format!(
                "ca_file {}: unusable certificate: {e}",
                path.display()
            ))
        })?;
        added += 1;
    }
    if added == 0 {
        return Err(tls_error(format!(
            "ca_file {} holds no PEM certificate",
            path.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(format!("TLS set-up failed: {e}")))?
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
    mut each: impl FnMut(SearchEntry),
) -> Result<usize, SourceError> {
    // EntriesOnly drops referrals and intermediate messages, which
    // `SearchEntry::construct` cannot parse; PagedResults fetches every page.
    let adapters: Vec<Box<dyn Adapter<'_, String, Vec<String>>>> = vec![
        Box::new(EntriesOnly::new()),
        Box::new(PagedResults::new(settings.page_size)),
    ];
    ldap.with_timeout(settings.timeout);
    let what = format!("the search of {base}");
    let mut stream = ldap
        .streaming_search_with(adapters, base, Scope::Subtree, filter, attributes)
        .await
        .map_err(|e| lost(settings, &what, e))?;
    let mut count = 0usize;
    loop {
        match stream.next().await {
            Ok(Some(entry)) => {
                each(SearchEntry::construct(entry));
                count += 1;
            }
            Ok(None) => break,
            Err(e) => {
                let _ = stream.finish().await;
                return Err(lost(settings, &what, e));
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
) -> Result<Option<SearchEntry>, SourceError> {
    let what = format!("the read of {dn}");
    let result = ldap
        .with_timeout(settings.timeout)
        .search(dn, Scope::Base, "(objectClass=*)", attributes)
        .await
        .map_err(|e| lost(settings, &what, e))?;
    let ldap3::SearchResult(entries, result) = result;
    if result.rc != 0 {
        return Err(search_error(settings, dn, 0, &result));
    }
    Ok(entries.into_iter().next().map(SearchEntry::construct))
}

/// Proves that `base` exists and is visible to the bind DN.
pub(super) async fn base_exists(
    ldap: &mut Ldap,
    settings: &LdapSettings,
    base: &str,
) -> Result<(), SourceError> {
    match read_entry(ldap, settings, base, vec!["1.1".into()]).await? {
        Some(_) => Ok(()),
        None => Err(SourceError::Unavailable {
            message: format!(
                "LDAP {}: base DN {base} is not visible to {}",
                settings.url, settings.bind_dn
            ),
            hint: "check the DN, and that the service account may read it".into(),
        }),
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
) -> Result<usize, SourceError> {
    let what = format!("the sample search under {base}");
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
        .map_err(|e| lost(settings, &what, e))?;
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

fn unavailable(message: String, hint: impl Into<String>) -> SourceError {
    SourceError::Unavailable {
        message,
        hint: hint.into(),
    }
}

/// The TLS error inside `e`, if it is one.
fn tls_cause(e: &LdapError) -> Option<String> {
    match e {
        LdapError::Rustls { source } => Some(source.to_string()),
        LdapError::DNSName { source } => Some(source.to_string()),
        LdapError::Io { source } => source
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(ToString::to_string),
        _ => None,
    }
}

fn connect_error(settings: &LdapSettings, e: LdapError) -> SourceError {
    let url = &settings.url;
    if let Some(tls) = tls_cause(&e) {
        let hint = match settings.tls {
            TlsVerify::CaFile(_) => {
                "check that ca_file holds the CA that signed the server's certificate \
                                     and that the URL's host name is in the certificate"
            }
            _ => {
                "if the server's certificate comes from a private CA, set ca_file to that CA's PEM file; \
                  the URL's host name must be in the certificate"
            }
        };
        return unavailable(format!("LDAP {url}: TLS handshake failed: {tls}"), hint);
    }
    match e {
        LdapError::Timeout { .. } => unavailable(
            format!(
                "LDAP {url}: no connection within {}",
                humantime::format_duration(settings.timeout)
            ),
            "check the URL's host and port, that the server runs, and firewalls; or raise timeout",
        ),
        LdapError::LdapResult { result } if settings.starttls => unavailable(
            format!(
                "LDAP {url}: the server refused StartTLS: {}",
                server_says(&result)
            ),
            "use an ldaps:// URL, or ask the directory's administrators to enable StartTLS",
        ),
        other => unavailable(
            format!("LDAP {url}: cannot connect: {other}"),
            "check the URL's host and port, that the server runs, and firewalls",
        ),
    }
}

fn bind_error(settings: &LdapSettings, result: &LdapResult) -> SourceError {
    let (url, dn) = (&settings.url, &settings.bind_dn);
    let password = settings.password.describe();
    match result.rc {
        rc::INVALID_CREDENTIALS => unavailable(
            format!("LDAP {url}: bind as {dn} refused: invalid credentials"),
            format!(
                "check bind_dn and the password in {password} (and that the account is not locked or expired)"
            ),
        ),
        rc::CONFIDENTIALITY_REQUIRED | rc::STRONGER_AUTH_REQUIRED => unavailable(
            format!(
                "LDAP {url}: bind as {dn} refused: the server requires an encrypted connection ({})",
                server_says(result)
            ),
            "use an ldaps:// URL or set `starttls: true`",
        ),
        rc::INAPPROPRIATE_AUTH | rc::AUTH_METHOD_NOT_SUPPORTED | rc::UNWILLING => unavailable(
            format!("LDAP {url}: bind as {dn} refused: {}", server_says(result)),
            "the account may not use a simple bind (or is disabled); check it with the directory's administrators",
        ),
        _ => unavailable(
            format!("LDAP {url}: bind as {dn} failed: {}", server_says(result)),
            "check bind_dn and the password, then run `idsync check`",
        ),
    }
}

/// A search that ended with a non-success result: never a partial directory.
fn search_error(
    settings: &LdapSettings,
    base: &str,
    entries: usize,
    result: &LdapResult,
) -> SourceError {
    let url = &settings.url;
    let cut_short = |limit: &str, hint: &str| {
        unavailable(
            format!(
                "LDAP {url}: the server stopped the search of {base} after {entries} entries \
                 ({limit}: {}); a partial directory is never used, nothing was planned",
                server_says(result)
            ),
            hint.to_string(),
        )
    };
    match result.rc {
        rc::SIZE_LIMIT => cut_short(
            "size limit exceeded",
            "the service account's limit applies to paged searches too: set page_size at or \
             below the server's limit, or have the limit for paged searches raised (OpenLDAP: \
             size.pr/size.prtotal; AD: MaxPageSize)",
        ),
        rc::TIME_LIMIT => cut_short(
            "time limit exceeded",
            "have the service account's time limit raised, or narrow user_filter / the base DNs",
        ),
        rc::ADMIN_LIMIT => cut_short(
            "administrative limit exceeded",
            "have the server's limits for the service account raised (AD: MaxResultSetSize)",
        ),
        rc::NO_SUCH_OBJECT => unavailable(
            format!(
                "LDAP {url}: base DN {base} does not exist (or is hidden from {})",
                settings.bind_dn
            ),
            "check base_dn, user_base_dn and group_base_dn",
        ),
        rc::INVALID_DN_SYNTAX => unavailable(
            format!(
                "LDAP {url}: {base} is not a valid DN: {}",
                server_says(result)
            ),
            "check base_dn, user_base_dn and group_base_dn",
        ),
        rc::REFERRAL => unavailable(
            format!(
                "LDAP {url}: the server does not hold {base} and referred the search to {}; \
                 referrals are not followed",
                if result.refs.is_empty() {
                    "another server".to_string()
                } else {
                    result.refs.join(", ")
                }
            ),
            "point url at a server that holds the base DN (for AD, a domain controller of that domain)",
        ),
        rc::UNAVAILABLE_CRITICAL_EXTENSION => unavailable(
            format!(
                "LDAP {url}: the server does not support paged results: {}",
                server_says(result)
            ),
            "idsync reads with the paged results control (RFC 2696); enable it on the server",
        ),
        rc::INSUFFICIENT_ACCESS => unavailable(
            format!(
                "LDAP {url}: {} may not search {base}: {}",
                settings.bind_dn,
                server_says(result)
            ),
            "grant the service account read access to the users and groups",
        ),
        rc::BUSY | rc::UNAVAILABLE => unavailable(
            format!(
                "LDAP {url}: the server is busy or unavailable: {}",
                server_says(result)
            ),
            "try again later",
        ),
        _ => unavailable(
            format!(
                "LDAP {url}: the search of {base} failed after {entries} entries: {}; nothing was planned",
                server_says(result)
            ),
            "if the server mentions the page size, set page_size at or below its limit",
        ),
    }
}

/// The connection failed in the middle of an operation.
fn lost(settings: &LdapSettings, what: &str, e: LdapError) -> SourceError {
    let url = &settings.url;
    match e {
        LdapError::Timeout { .. } => unavailable(
            format!(
                "LDAP {url}: {what} got no answer within {}; nothing was planned",
                humantime::format_duration(settings.timeout)
            ),
            "raise timeout if the server is slow, or check the server's health",
        ),
        other => unavailable(
            format!(
                "LDAP {url}: the connection failed during {what}: {other}; nothing was planned"
            ),
            "check the server's health and the network, then run again",
        ),
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

    fn result(rc: u32, text: &str, refs: &[&str]) -> LdapResult {
        LdapResult {
            rc,
            matched: String::new(),
            text: text.into(),
            refs: refs.iter().map(|r| r.to_string()).collect(),
            ctrls: vec![],
        }
    }

    fn parts(e: SourceError) -> (String, String) {
        match e {
            SourceError::Unavailable { message, hint } => (message, hint),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[test]
    fn limits_are_failed_reads_with_a_hint() {
        let (message, hint) = parts(search_error(
            &settings(),
            "dc=corp",
            1000,
            &result(4, "", &[]),
        ));
        assert!(
            message.contains("after 1000 entries (size limit exceeded"),
            "{message}"
        );
        assert!(message.contains("nothing was planned"), "{message}");
        assert!(hint.contains("page_size"), "{hint}");
        let (message, _) = parts(search_error(&settings(), "dc=corp", 7, &result(3, "", &[])));
        assert!(message.contains("time limit exceeded"), "{message}");
        let (message, _) = parts(search_error(
            &settings(),
            "dc=corp",
            7,
            &result(11, "", &[]),
        ));
        assert!(
            message.contains("administrative limit exceeded"),
            "{message}"
        );
    }

    #[test]
    fn missing_bases_referrals_and_bind_refusals_are_told_apart() {
        let (message, hint) = parts(search_error(
            &settings(),
            "ou=x,dc=corp",
            0,
            &result(32, "", &[]),
        ));
        assert!(
            message.contains("base DN ou=x,dc=corp does not exist"),
            "{message}"
        );
        assert!(hint.contains("base_dn"), "{hint}");
        let refs = ["ldap://dc9.other.example/dc=other"];
        let (message, _) = parts(search_error(
            &settings(),
            "dc=other",
            0,
            &result(10, "", &refs),
        ));
        assert!(
            message.contains("referred the search to ldap://dc9.other.example/dc=other"),
            "{message}"
        );
        let (message, hint) = parts(bind_error(
            &settings(),
            &result(49, "80090308: AcceptSecurityContext error", &[]),
        ));
        assert!(
            message.contains("bind as cn=sync,dc=corp refused: invalid credentials"),
            "{message}"
        );
        assert!(hint.contains("the variable PW"), "{hint}");
        let (message, hint) = parts(bind_error(
            &settings(),
            &result(13, "confidentiality required", &[]),
        ));
        assert!(
            message.contains("requires an encrypted connection"),
            "{message}"
        );
        assert!(hint.contains("starttls"), "{hint}");
    }

    #[test]
    fn unusable_ca_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let (message, _) = parts(client_config(&missing).unwrap_err());
        assert!(message.contains("cannot read ca_file"), "{message}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let (message, hint) = parts(client_config(&empty).unwrap_err());
        assert!(message.contains("holds no PEM certificate"), "{message}");
        assert!(hint.contains("PEM"), "{hint}");
    }
}
