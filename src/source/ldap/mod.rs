//! The LDAP / Active Directory source: reads every user and group under the
//! configured base DNs with paged subtree searches, over plain LDAP, LDAPS or
//! StartTLS, into canonical records keyed by `entryUUID` (or AD's `objectGUID`).
//!
//! Owns: the `source.ldap` config section and its compilation, the connection
//! (TLS, bind, timeouts), paged searches, key extraction, DN matching and group
//! flattening. Does not own: what attributes mean (the mapping decides, e.g.
//! `active` from AD's `userAccountControl`), incremental reads (every read is a
//! full read), or following referrals (they are logged, never chased).
//!
//! A read is all or nothing: a size, time or admin limit, a lost connection or any
//! other non-success result fails it, because a missing page would look like
//! departed users.

mod connect;
mod dn;
mod entry;
mod groups;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use secrecy::SecretString;

use futures_util::future::BoxFuture;

use super::{Source, SourceError};
use crate::model::{SourceDirectory, SourceUser};

/// Users: every inetOrgPerson (AD: set `(&(objectCategory=person)(objectClass=user))`).
pub const DEFAULT_USER_FILTER: &str = "(objectClass=inetOrgPerson)";
/// Groups: the static group classes of OpenLDAP, 389-DS and Active Directory.
pub const DEFAULT_GROUP_FILTER: &str = "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=posixGroup)(objectClass=group))";
const DEFAULT_KEY_ATTRIBUTE: &str = "entryUUID";
const DEFAULT_GROUP_NAME_ATTRIBUTE: &str = "cn";
/// Half of Active Directory's default MaxPageSize (1000), which OpenLDAP limits
/// are usually modelled on: a server refuses (OpenLDAP) or caps (AD) larger pages.
const DEFAULT_PAGE_SIZE: u32 = 500;
/// Larger pages gain nothing and make one server answer very large.
const MAX_PAGE_SIZE: u32 = 10_000;
/// For the connection and for each operation (each page of a search, not the
/// whole read, which may legitimately take minutes on a big directory).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The `source:` section for `kind: ldap`, as written in the config file.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldap://host[:port]` or `ldaps://host[:port]`.
    url: String,
    #[serde(default)]
    starttls: bool,
    /// A PEM file with the CA certificate(s) that signed the server's certificate,
    /// trusted in addition to the system's.
    #[serde(default)]
    ca_file: Option<String>,
    #[serde(default)]
    danger_skip_tls_verify: bool,
    bind_dn: String,
    #[serde(default)]
    bind_password_env: Option<String>,
    #[serde(default)]
    bind_password_file: Option<String>,
    base_dn: String,
    #[serde(default)]
    user_base_dn: Option<String>,
    #[serde(default)]
    group_base_dn: Option<String>,
    #[serde(default)]
    user_filter: Option<String>,
    #[serde(default)]
    group_filter: Option<String>,
    /// `entryUUID` by default; `objectGUID` for Active Directory.
    #[serde(default)]
    key_attribute: Option<String>,
    /// Defaults to `key_attribute`.
    #[serde(default)]
    group_key_attribute: Option<String>,
    #[serde(default)]
    group_name_attribute: Option<String>,
    #[serde(default)]
    page_size: Option<u32>,
    /// A humantime duration (`30s`, `2m`).
    #[serde(default)]
    timeout: Option<String>,
}

/// How the server's certificate is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
enum TlsVerify {
    /// Against the system's trust store.
    System,
    /// Against the system's trust store plus the CAs in this PEM file.
    CaFile(PathBuf),
    /// Not at all (`danger_skip_tls_verify`).
    Skip,
}

/// Where the bind password is; it is read only when connecting.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PasswordSource {
    Env(String),
    File(PathBuf),
}

/// A checked LDAP source configuration. Holds where the password is, never the
/// password itself.
#[derive(Clone, Debug)]
pub struct LdapSettings {
    url: String,
    starttls: bool,
    tls: TlsVerify,
    bind_dn: String,
    password: PasswordSource,
    base_dn: String,
    user_base_dn: String,
    group_base_dn: String,
    user_filter: String,
    group_filter: String,
    key_attribute: String,
    group_key_attribute: String,
    group_name_attribute: String,
    page_size: i32,
    timeout: Duration,
}

impl LdapConfig {
    /// Checks the section and resolves relative paths against `config_dir` (the
    /// config file's folder). No network and no secrets: `idsync validate` runs it.
    pub fn compile(&self, config_dir: &Path) -> Result<LdapSettings, String> {
        let url = compile_url(&self.url)?;
        let tls_in_use = url.starts_with("ldaps://") || self.starttls;
        if self.starttls && url.starts_with("ldaps://") {
            return Err(
                "`starttls: true` needs an ldap:// URL: ldaps:// is TLS from the start; \
                 drop one of them"
                    .into(),
            );
        }
        let resolve = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                config_dir.join(p)
            }
        };
        let tls = match (&self.ca_file, self.danger_skip_tls_verify) {
            (Some(_), true) => {
                return Err(
                    "`ca_file` and `danger_skip_tls_verify` contradict each other: \
                     keep `ca_file` and remove `danger_skip_tls_verify`"
                        .into(),
                );
            }
            (Some(file), false) if file.trim().is_empty() => {
                return Err("`ca_file` is empty".into());
            }
            (Some(file), false) => TlsVerify::CaFile(resolve(file)),
            (None, true) => TlsVerify::Skip,
            (None, false) => TlsVerify::System,
        };
        if tls != TlsVerify::System && !tls_in_use {
            return Err(format!(
                "`{}` has no effect on a plain ldap:// connection: use an ldaps:// URL or \
                 `starttls: true`",
                if tls == TlsVerify::Skip {
                    "danger_skip_tls_verify"
                } else {
                    "ca_file"
                }
            ));
        }
        let password = match (&self.bind_password_env, &self.bind_password_file) {
            (Some(var), None) if !var.trim().is_empty() => PasswordSource::Env(var.trim().into()),
            (None, Some(file)) if !file.trim().is_empty() => PasswordSource::File(resolve(file)),
            (Some(_), Some(_)) => {
                return Err(
                    "both `bind_password_env` and `bind_password_file` are set: keep one".into(),
                );
            }
            (None, None) => {
                return Err("no bind password: set `bind_password_env` (an environment \
                     variable's name) or `bind_password_file` (a file only idsync can read)"
                    .into());
            }
            _ => return Err("the bind password setting is empty".into()),
        };
        let bind_dn = non_empty("bind_dn", &self.bind_dn)?;
        let base_dn = non_empty("base_dn", &self.base_dn)?;
        let user_base_dn = match &self.user_base_dn {
            Some(dn) => non_empty("user_base_dn", dn)?,
            None => base_dn.clone(),
        };
        let group_base_dn = match &self.group_base_dn {
            Some(dn) => non_empty("group_base_dn", dn)?,
            None => base_dn.clone(),
        };
        let user_filter = compile_filter(
            "user_filter",
            self.user_filter.as_deref(),
            DEFAULT_USER_FILTER,
        )?;
        let group_filter = compile_filter(
            "group_filter",
            self.group_filter.as_deref(),
            DEFAULT_GROUP_FILTER,
        )?;
        let key_attribute = compile_attribute(
            "key_attribute",
            self.key_attribute.as_deref(),
            DEFAULT_KEY_ATTRIBUTE,
        )?;
        let group_key_attribute = compile_attribute(
            "group_key_attribute",
            self.group_key_attribute.as_deref(),
            &key_attribute,
        )?;
        let group_name_attribute = compile_attribute(
            "group_name_attribute",
            self.group_name_attribute.as_deref(),
            DEFAULT_GROUP_NAME_ATTRIBUTE,
        )?;
        let page_size = self.page_size.unwrap_or(DEFAULT_PAGE_SIZE);
        if !(1..=MAX_PAGE_SIZE).contains(&page_size) {
            return Err(format!(
                "page_size {page_size} is out of range: use 1 to {MAX_PAGE_SIZE} (at most the \
                 server's limit; Active Directory's default MaxPageSize is 1000)"
            ));
        }
        let timeout = match &self.timeout {
            None => DEFAULT_TIMEOUT,
            Some(text) => match humantime::parse_duration(text.trim()) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => return Err("timeout must be longer than zero".into()),
                Err(e) => {
                    return Err(format!(
                        "timeout {text:?} is not a duration ({e}); write e.g. 30s or 2m"
                    ));
                }
            },
        };
        Ok(LdapSettings {
            url,
            starttls: self.starttls,
            tls,
            bind_dn,
            password,
            base_dn,
            user_base_dn,
            group_base_dn,
            user_filter,
            group_filter,
            key_attribute,
            group_key_attribute,
            group_name_attribute,
            page_size: page_size as i32,
            timeout,
        })
    }
}

impl Source for LdapSettings {
    fn read<'a>(
        &'a self,
        attributes: &'a BTreeSet<String>,
    ) -> BoxFuture<'a, Result<SourceDirectory, SourceError>> {
        Box::pin(read(self, attributes))
    }

    fn check(&self) -> BoxFuture<'_, Result<String, SourceError>> {
        Box::pin(check(self))
    }

    fn describe(&self) -> String {
        format!("ldap {}", self.url())
    }
}

impl LdapSettings {
    /// The server's URL, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The attribute that keys users (`entryUUID`, `objectGUID`, …).
    pub fn key_attribute(&self) -> &str {
        &self.key_attribute
    }
}

/// Reads every user and group completely. `attributes` are the user attributes
/// the mapping references; the key, `uid` (for posixGroup members) and the DN (as
/// attribute `dn`) are always there.
pub async fn read(
    settings: &LdapSettings,
    attributes: &BTreeSet<String>,
) -> Result<SourceDirectory, SourceError> {
    let started = Instant::now();
    let mut ldap = connect::open(settings).await?;

    let mut users = entry::UserReader::new(settings);
    let mut raw_groups = groups::GroupReader::new(settings);
    let user_attrs = user_attributes(settings, attributes);
    let group_attrs = raw_groups.attributes();
    // One search after the other: OpenLDAP keeps one paged search per connection
    // (a second one invalidates the first one's cookie). Entries are converted
    // as they arrive, so raw entries never pile up.
    connect::search_each(
        &mut ldap,
        settings,
        &settings.user_base_dn,
        &settings.user_filter,
        user_attrs,
        |e| users.add(e),
    )
    .await?;
    connect::search_each(
        &mut ldap,
        settings,
        &settings.group_base_dn,
        &settings.group_filter,
        group_attrs,
        |e| raw_groups.add(e),
    )
    .await?;
    raw_groups.complete_ranges(&mut ldap, settings).await?;
    connect::close(ldap).await;

    let users = users.finish()?;
    let raw_groups = raw_groups.finish()?;
    let (groups, unresolved_members) = groups::resolve(raw_groups, &users);
    tracing::info!(
        url = %settings.url,
        users = users.users.len(),
        groups = groups.len(),
        unresolved_members,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "LDAP directory read"
    );
    let users: Vec<SourceUser> = users.users;
    Ok(SourceDirectory {
        users,
        groups,
        unresolved_members,
    })
}

/// Connects, binds and reads each configured base DN's entry: proves that the
/// server is reachable, TLS verifies, the bind is accepted and the bases exist.
/// The answer says what was verified.
pub async fn check(settings: &LdapSettings) -> Result<String, SourceError> {
    let mut ldap = connect::open(settings).await?;
    let mut bases: Vec<&str> = vec![&settings.base_dn];
    for base in [&settings.user_base_dn, &settings.group_base_dn] {
        if !bases
            .iter()
            .any(|b| dn::normalize(b) == dn::normalize(base))
        {
            bases.push(base);
        }
    }
    for base in &bases {
        connect::base_exists(&mut ldap, settings, base).await?;
    }
    let users = connect::first_page(
        &mut ldap,
        settings,
        &settings.user_base_dn,
        &settings.user_filter,
    )
    .await?;
    let groups = connect::first_page(
        &mut ldap,
        settings,
        &settings.group_base_dn,
        &settings.group_filter,
    )
    .await?;
    connect::close(ldap).await;
    let found = |n: usize, what: &str| {
        if n > 0 {
            format!("the {what} filter matches entries")
        } else {
            format!("the {what} filter matches NO entries")
        }
    };
    let transport = if settings.url.starts_with("ldaps://") {
        "LDAPS"
    } else if settings.starttls {
        "StartTLS"
    } else {
        "plain LDAP, unencrypted"
    };
    let verify = match &settings.tls {
        _ if transport.starts_with("plain") => "",
        TlsVerify::System => ", certificate verified against the system trust store",
        TlsVerify::CaFile(_) => ", certificate verified against ca_file",
        TlsVerify::Skip => ", certificate NOT verified (danger_skip_tls_verify)",
    };
    if users == 0 {
        tracing::warn!(filter = %settings.user_filter, base = %settings.user_base_dn, "the user filter matches no entries");
    }
    Ok(format!(
        "LDAP {} reachable ({transport}{verify}); bound as {}; base DN{} {} readable; paged search accepted, {}, {}",
        settings.url,
        settings.bind_dn,
        if bases.len() == 1 { "" } else { "s" },
        bases.join(", "),
        found(users, "user"),
        found(groups, "group")
    ))
}

/// What the user search asks for: the mapping's attributes, the key, and `uid`
/// (posixGroup members name users by uid). `dn` is not an attribute: every
/// entry carries its DN.
fn user_attributes(settings: &LdapSettings, attributes: &BTreeSet<String>) -> Vec<String> {
    let mut wanted: Vec<String> = Vec::with_capacity(attributes.len() + 2);
    let extra = [settings.key_attribute.as_str(), "uid"];
    for name in attributes.iter().map(String::as_str).chain(extra) {
        if name.eq_ignore_ascii_case("dn") || wanted.iter().any(|w| w.eq_ignore_ascii_case(name)) {
            continue;
        }
        wanted.push(name.to_string());
    }
    wanted
}

fn non_empty(field: &str, value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err(format!("`{field}` is empty"));
    }
    Ok(value.to_string())
}

fn compile_url(url: &str) -> Result<String, String> {
    let url = url.trim();
    let parsed = url::Url::parse(url).map_err(|e| format!("url {url:?} is not a URL ({e})"))?;
    match parsed.scheme() {
        "ldap" | "ldaps" => {}
        other => {
            return Err(format!(
                "url scheme {other:?} is not supported: use ldap:// (optionally with \
                 `starttls: true`) or ldaps://"
            ));
        }
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "url {url:?} names no host: write ldap://HOST[:PORT]"
        ));
    }
    if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() || parsed.fragment().is_some()
    {
        return Err(format!(
            "url {url:?} carries a DN or search part: give only ldap[s]://HOST[:PORT] and \
             set base_dn, user_filter and group_filter separately"
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("url must not carry credentials: use bind_dn and bind_password_env".into());
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// Filters are the operator's, passed to the server as written; only their
/// syntax is checked here so a typo fails `validate`, not a 3 a.m. run.
fn compile_filter(field: &str, value: Option<&str>, default: &str) -> Result<String, String> {
    let filter = value.map(str::trim).unwrap_or(default);
    if ldap3::parse_filter(filter).is_err() {
        return Err(format!(
            "`{field}` {filter:?} is not a valid LDAP filter (RFC 4515): check the parentheses, \
             and escape literal * ( ) \\ in values as \\2a \\28 \\29 \\5c"
        ));
    }
    Ok(filter.to_string())
}

fn compile_attribute(field: &str, value: Option<&str>, default: &str) -> Result<String, String> {
    let name = value.map(str::trim).unwrap_or(default);
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ';'));
    if !valid {
        return Err(format!("`{field}` {name:?} is not an LDAP attribute name"));
    }
    Ok(name.to_string())
}

impl PasswordSource {
    /// Reads the bind password. An empty password is refused: LDAP treats a simple
    /// bind with an empty password as an anonymous bind that "succeeds".
    fn read(&self) -> Result<SecretString, SourceError> {
        let unavailable =
            |message: String, hint: String| SourceError::Unavailable { message, hint };
        match self {
            PasswordSource::Env(var) => match std::env::var(var) {
                Ok(value) if !value.is_empty() => Ok(SecretString::from(value)),
                _ => Err(unavailable(
                    format!("the LDAP bind password variable {var} is not set"),
                    format!("export {var}=<the service account's password> before running idsync"),
                )),
            },
            PasswordSource::File(path) => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let meta = std::fs::metadata(path).map_err(|e| {
                        unavailable(
                            format!("cannot read bind password file {}: {e}", path.display()),
                            "check bind_password_file in the source section".into(),
                        )
                    })?;
                    let mode = meta.permissions().mode();
                    if mode & 0o077 != 0 {
                        return Err(unavailable(
                            format!(
                                "bind password file {} is open to other users (mode {:o})",
                                path.display(),
                                mode & 0o777
                            ),
                            format!("chmod 600 {}", path.display()),
                        ));
                    }
                }
                let text = std::fs::read_to_string(path).map_err(|e| {
                    unavailable(
                        format!("cannot read bind password file {}: {e}", path.display()),
                        "check bind_password_file in the source section".into(),
                    )
                })?;
                // Only the line ending an editor adds: spaces may be part of a password.
                let password = text
                    .strip_suffix('\n')
                    .map(|t| t.strip_suffix('\r').unwrap_or(t))
                    .unwrap_or(&text);
                if password.is_empty() {
                    return Err(unavailable(
                        format!("bind password file {} is empty", path.display()),
                        "write the service account's password into it".into(),
                    ));
                }
                Ok(SecretString::from(password.to_string()))
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            PasswordSource::Env(var) => format!("the variable {var}"),
            PasswordSource::File(path) => format!("the file {}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests;
