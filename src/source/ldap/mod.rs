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
mod digest;
mod dn;
mod entry;
mod error;
mod groups;
mod members;
mod stream;

#[cfg(fuzzing)]
pub(crate) use fuzzing::entry as fuzz_entry;

pub use error::{
    BadEntries, BindRefusal, CaFileProblem, EntryProblem, KeyProblem, LdapError, LdapOperation,
    SearchLimit,
};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::future::{BoxFuture, LocalBoxFuture};
use secrecy::{ExposeSecret, SecretString};
use serde_saphyr::Spanned;

use super::{Source, SourceConfigError, SourceError, StreamedRead, UserEach};
use crate::model::{SourceDirectory, SourceGroup};
use crate::secret;
use stream::LdapRead;

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

/// The `source:` section for `kind: ldap`, as written in the config file. Every
/// field keeps its line and column, so a mistake is reported where it is.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldap://host[:port]` or `ldaps://host[:port]`.
    url: Spanned<String>,
    #[serde(default)]
    starttls: Option<Spanned<bool>>,
    /// A PEM file with the CA certificate(s) that signed the server's certificate,
    /// trusted in addition to the system's.
    #[serde(default)]
    ca_file: Option<Spanned<String>>,
    #[serde(default)]
    danger_skip_tls_verify: Option<Spanned<bool>>,
    bind_dn: Spanned<String>,
    #[serde(default)]
    bind_password_env: Option<Spanned<String>>,
    #[serde(default)]
    bind_password_file: Option<Spanned<String>>,
    base_dn: Spanned<String>,
    #[serde(default)]
    user_base_dn: Option<Spanned<String>>,
    #[serde(default)]
    group_base_dn: Option<Spanned<String>>,
    #[serde(default)]
    user_filter: Option<Spanned<String>>,
    #[serde(default)]
    group_filter: Option<Spanned<String>>,
    /// `entryUUID` by default; `objectGUID` for Active Directory.
    #[serde(default)]
    key_attribute: Option<Spanned<String>>,
    /// Defaults to `key_attribute`.
    #[serde(default)]
    group_key_attribute: Option<Spanned<String>>,
    #[serde(default)]
    group_name_attribute: Option<Spanned<String>>,
    #[serde(default)]
    page_size: Option<Spanned<u32>>,
    /// Active Directory only: also read the critical system groups (Domain
    /// Admins, Schema Admins, …: `isCriticalSystemObject`) and the groups of
    /// `CN=Builtin`. Default false.
    #[serde(default)]
    include_system_groups: Option<Spanned<bool>>,
    /// A humantime duration (`30s`, `2m`).
    #[serde(default)]
    timeout: Option<Spanned<String>>,
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
    include_system_groups: bool,
}

/// What the rootDSE says about the server: Active Directory (and Samba's AD
/// DC) gets its own defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Flavour {
    ActiveDirectory,
    Other,
}

/// `supportedCapabilities` of Active Directory (LDAP_CAP_ACTIVE_DIRECTORY_OID)
/// and of AD LDS (LDAP_CAP_ACTIVE_DIRECTORY_ADAM_OID).
const AD_CAPABILITIES: [&str; 2] = ["1.2.840.113556.1.4.800", "1.2.840.113556.1.4.1851"];

/// Leaves AD's critical system objects (Domain Admins, krbtgt's groups, …) out.
const NOT_CRITICAL: &str = "(!(isCriticalSystemObject=TRUE))";

/// Where the README explains every field.
const README_HINT: &str = "see the LDAP source section of the README";

/// A configuration mistake at `field`'s value.
fn refuse<T>(field: &Spanned<T>, message: impl Into<String>) -> SourceConfigError {
    SourceConfigError {
        location: field.referenced,
        message: message.into(),
        hint: README_HINT.into(),
    }
}

/// A flag's value, `false` when it is not set.
fn flag(field: &Option<Spanned<bool>>) -> bool {
    field.as_ref().is_some_and(|f| f.value)
}

impl LdapConfig {
    /// Checks the section and resolves relative paths against `config_dir` (the
    /// config file's folder). No network and no secrets: `idsync validate` runs it.
    /// A mistake is reported at the offending field's line and column.
    pub fn compile(&self, config_dir: &Path) -> Result<LdapSettings, SourceConfigError> {
        let url = compile_url(&self.url)?;
        let starttls = flag(&self.starttls);
        let tls_in_use = url.starts_with("ldaps://") || starttls;
        if let Some(field) = self.starttls.as_ref().filter(|f| f.value)
            && url.starts_with("ldaps://")
        {
            return Err(refuse(
                field,
                "`starttls: true` needs an ldap:// URL: ldaps:// is TLS from the start; \
                 drop one of them",
            ));
        }
        let resolve = |p: &str| resolve_path(config_dir, p);
        let tls = self.compile_tls(tls_in_use, &resolve)?;
        let password = self.compile_password(&resolve)?;
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
            self.user_filter.as_ref(),
            DEFAULT_USER_FILTER,
        )?;
        let group_filter = compile_filter(
            "group_filter",
            self.group_filter.as_ref(),
            DEFAULT_GROUP_FILTER,
        )?;
        let key_attribute = compile_attribute(
            "key_attribute",
            self.key_attribute.as_ref(),
            DEFAULT_KEY_ATTRIBUTE,
        )?;
        let group_key_attribute = compile_attribute(
            "group_key_attribute",
            self.group_key_attribute.as_ref(),
            &key_attribute,
        )?;
        let group_name_attribute = compile_attribute(
            "group_name_attribute",
            self.group_name_attribute.as_ref(),
            DEFAULT_GROUP_NAME_ATTRIBUTE,
        )?;
        let page_size = self.compile_page_size()?;
        let timeout = self.compile_timeout()?;
        Ok(LdapSettings {
            url,
            starttls,
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
            include_system_groups: flag(&self.include_system_groups),
        })
    }

    /// How the server's certificate is checked; settings that contradict
    /// each other, or that a plain ldap:// connection would ignore, refused.
    fn compile_tls(
        &self,
        tls_in_use: bool,
        resolve: &dyn Fn(&str) -> PathBuf,
    ) -> Result<TlsVerify, SourceConfigError> {
        let skip_verify = self.danger_skip_tls_verify.as_ref().filter(|f| f.value);
        let tls = match (&self.ca_file, skip_verify) {
            (Some(_), Some(skip)) => {
                return Err(refuse(
                    skip,
                    "`ca_file` and `danger_skip_tls_verify` contradict each other: \
                     keep `ca_file` and remove `danger_skip_tls_verify`",
                ));
            }
            (Some(file), None) if file.value.trim().is_empty() => {
                return Err(refuse(file, "`ca_file` is empty"));
            }
            (Some(file), None) => TlsVerify::CaFile(resolve(&file.value)),
            (None, Some(_)) => TlsVerify::Skip,
            (None, None) => TlsVerify::System,
        };
        if !tls_in_use {
            let useless = match (&self.ca_file, skip_verify) {
                (Some(file), _) => Some(("ca_file", file.referenced)),
                (None, Some(skip)) => Some(("danger_skip_tls_verify", skip.referenced)),
                (None, None) => None,
            };
            if let Some((field, location)) = useless {
                return Err(SourceConfigError {
                    location,
                    message: format!(
                        "`{field}` has no effect on a plain ldap:// connection: use an ldaps:// \
                         URL or `starttls: true`"
                    ),
                    hint: README_HINT.into(),
                });
            }
        }
        Ok(tls)
    }

    /// Where the bind password comes from: an environment variable or a file,
    /// exactly one.
    fn compile_password(
        &self,
        resolve: &dyn Fn(&str) -> PathBuf,
    ) -> Result<PasswordSource, SourceConfigError> {
        match (&self.bind_password_env, &self.bind_password_file) {
            (Some(var), None) if !var.value.trim().is_empty() => {
                Ok(PasswordSource::Env(var.value.trim().into()))
            }
            (None, Some(file)) if !file.value.trim().is_empty() => {
                Ok(PasswordSource::File(resolve(&file.value)))
            }
            (Some(env), Some(file)) => {
                // At the one written last: that is the one to reconsider.
                let at = |l: &serde_saphyr::Location| (l.line(), l.column());
                let later = if at(&file.referenced) > at(&env.referenced) {
                    file.referenced
                } else {
                    env.referenced
                };
                Err(SourceConfigError {
                    location: later,
                    message: "both `bind_password_env` and `bind_password_file` are set: keep one"
                        .into(),
                    hint: README_HINT.into(),
                })
            }
            (None, None) => {
                // Nothing to point at: the password goes with the bind DN.
                Err(refuse(
                    &self.bind_dn,
                    "no bind password: set `bind_password_env` (an environment variable's \
                     name) or `bind_password_file` (a file only idsync can read)",
                ))
            }
            (Some(empty), None) | (None, Some(empty)) => {
                Err(refuse(empty, "the bind password setting is empty"))
            }
        }
    }

    fn compile_page_size(&self) -> Result<u32, SourceConfigError> {
        Ok(match &self.page_size {
            None => DEFAULT_PAGE_SIZE,
            Some(size) if (1..=MAX_PAGE_SIZE).contains(&size.value) => size.value,
            Some(size) => {
                return Err(refuse(
                    size,
                    format!(
                        "page_size {} is out of range: use 1 to {MAX_PAGE_SIZE} (at most the \
                         server's limit; Active Directory's default MaxPageSize is 1000)",
                        size.value
                    ),
                ));
            }
        })
    }

    fn compile_timeout(&self) -> Result<Duration, SourceConfigError> {
        Ok(match &self.timeout {
            None => DEFAULT_TIMEOUT,
            Some(field) => match humantime::parse_duration(field.value.trim()) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => return Err(refuse(field, "timeout must be longer than zero")),
                Err(e) => {
                    return Err(refuse(
                        field,
                        format!(
                            "timeout {:?} is not a duration ({e}); write e.g. 30s or 2m",
                            field.value
                        ),
                    ));
                }
            },
        })
    }
}

/// `p` as written, or resolved against the config file's folder.
fn resolve_path(config_dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config_dir.join(p)
    }
}

impl Source for LdapSettings {
    fn read<'a>(
        &'a self,
        attributes: &'a BTreeSet<String>,
    ) -> BoxFuture<'a, Result<SourceDirectory, SourceError>> {
        Box::pin(async move { Ok(read(self, attributes).await?) })
    }

    fn stream(&self, attributes: &BTreeSet<String>) -> Option<Box<dyn StreamedRead + '_>> {
        Some(Box::new(Streamed(LdapRead::new(self, attributes))))
    }

    /// Each read opens its own connection and closes it when done.
    fn reads_on_one_thread(&self) -> bool {
        true
    }

    fn check(&self) -> BoxFuture<'_, Result<String, SourceError>> {
        Box::pin(async move { Ok(check(self).await?) })
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

    /// The group search's filter: on Active Directory, critical system
    /// objects are left out unless `include_system_groups` is set.
    fn group_filter(&self, flavour: Flavour) -> String {
        if flavour == Flavour::ActiveDirectory && !self.include_system_groups {
            format!("(&{}{NOT_CRITICAL})", self.group_filter)
        } else {
            self.group_filter.clone()
        }
    }

    /// Whether a group entry at `dn` is read: on Active Directory the groups of
    /// the `CN=Builtin` container (Administrators, Users, …) are not, unless
    /// `include_system_groups` is set.
    fn reads_group_at(&self, flavour: Flavour, dn: &str) -> bool {
        flavour != Flavour::ActiveDirectory || self.include_system_groups || !dn::is_in_builtin(dn)
    }
}

/// Whether the server is Active Directory, from the rootDSE's
/// `supportedCapabilities`. A server that does not show them is taken for a
/// plain LDAP server; a connection that fails here fails the read.
async fn flavour(ldap: &mut ldap3::Ldap, settings: &LdapSettings) -> Result<Flavour, LdapError> {
    let capabilities = connect::root_capabilities(ldap, settings).await?;
    Ok(
        if capabilities
            .iter()
            .any(|c| AD_CAPABILITIES.contains(&c.trim()))
        {
            Flavour::ActiveDirectory
        } else {
            Flavour::Other
        },
    )
}

/// Reads every user and group completely. `attributes` are the user attributes
/// the mapping references; the key, `uid` (for posixGroup members) and the DN
/// (as attribute `dn`) are always there.
pub async fn read(
    settings: &LdapSettings,
    attributes: &BTreeSet<String>,
) -> Result<SourceDirectory, LdapError> {
    let mut read = LdapRead::new(settings, attributes);
    let mut groups = read.groups().await?;
    let mut users = Vec::new();
    read.users(|user, _| users.push(user)).await?;
    let unresolved_members = read.finish(&mut groups)?;
    Ok(SourceDirectory {
        users,
        groups,
        unresolved_members,
        assignments: None,
    })
}

/// The streamed read the engine maps users from as they arrive.
struct Streamed<'s>(LdapRead<'s>);

impl StreamedRead for Streamed<'_> {
    fn groups(&mut self) -> LocalBoxFuture<'_, Result<Vec<SourceGroup>, SourceError>> {
        Box::pin(async move { Ok(self.0.groups().await?) })
    }

    fn users<'a>(
        &'a mut self,
        each: &'a mut UserEach<'_>,
    ) -> LocalBoxFuture<'a, Result<(), SourceError>> {
        Box::pin(async move {
            Ok(self
                .0
                .users(|user, groups| each(user, Some(groups)))
                .await?)
        })
    }

    fn finish(self: Box<Self>, groups: &mut [SourceGroup]) -> Result<usize, SourceError> {
        Ok(self.0.finish(groups)?)
    }
}

/// Connects, binds and reads each configured base DN's entry: proves that the
/// server is reachable, TLS verifies, the bind is accepted and the bases exist.
/// The answer says what was verified.
pub async fn check(settings: &LdapSettings) -> Result<String, LdapError> {
    let mut ldap = connect::open(settings).await?;
    let flavour = flavour(&mut ldap, settings).await?;
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
        &settings.group_filter(flavour),
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
    let active_directory = match flavour {
        Flavour::Other => String::new(),
        Flavour::ActiveDirectory if settings.include_system_groups => "; Active Directory: \
            critical system groups and CN=Builtin are read (include_system_groups: true); \
            primary group membership (primaryGroupID) is read"
            .to_string(),
        Flavour::ActiveDirectory => "; Active Directory: critical system groups \
            (isCriticalSystemObject: Domain Admins, Schema Admins, …) and the groups of \
            CN=Builtin are left out (set include_system_groups: true to read them); primary \
            group membership (primaryGroupID) is read"
            .to_string(),
    };
    Ok(format!(
        "LDAP {} reachable ({transport}{verify}); bound as {}; base DN{} {} readable; paged search accepted, {}, {}{active_directory}",
        settings.url,
        settings.bind_dn,
        if bases.len() == 1 { "" } else { "s" },
        bases.join(", "),
        found(users, "user"),
        found(groups, "group")
    ))
}

/// What the user search asks for: the mapping's attributes, the key, and `uid`
/// (posixGroup members name users by uid); on Active Directory also
/// `primaryGroupID` and `objectSid`, which name the user's primary group.
/// `dn` is not an attribute: every entry carries its DN.
fn user_attributes(
    settings: &LdapSettings,
    attributes: &BTreeSet<String>,
    flavour: Flavour,
) -> Vec<String> {
    let mut wanted: Vec<String> = Vec::with_capacity(attributes.len() + 4);
    let mut extra = vec![settings.key_attribute.as_str(), "uid"];
    if flavour == Flavour::ActiveDirectory {
        extra.extend([entry::PRIMARY_GROUP_ID, entry::OBJECT_SID]);
    }
    for name in attributes.iter().map(String::as_str).chain(extra) {
        if name.eq_ignore_ascii_case("dn") || wanted.iter().any(|w| w.eq_ignore_ascii_case(name)) {
            continue;
        }
        wanted.push(name.to_string());
    }
    wanted
}

fn non_empty(field: &str, value: &Spanned<String>) -> Result<String, SourceConfigError> {
    let text = value.value.trim();
    if text.is_empty() {
        return Err(refuse(value, format!("`{field}` is empty")));
    }
    Ok(text.to_string())
}

fn compile_url(field: &Spanned<String>) -> Result<String, SourceConfigError> {
    let url = field.value.trim();
    let parsed = url::Url::parse(url)
        .map_err(|e| refuse(field, format!("url {url:?} is not a URL ({e})")))?;
    match parsed.scheme() {
        "ldap" | "ldaps" => {}
        other => {
            return Err(refuse(
                field,
                format!(
                    "url scheme {other:?} is not supported: use ldap:// (optionally with \
                     `starttls: true`) or ldaps://"
                ),
            ));
        }
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(refuse(
            field,
            format!("url {url:?} names no host: write ldap://HOST[:PORT]"),
        ));
    }
    if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() || parsed.fragment().is_some()
    {
        return Err(refuse(
            field,
            format!(
                "url {url:?} carries a DN or search part: give only ldap[s]://HOST[:PORT] and \
                 set base_dn, user_filter and group_filter separately"
            ),
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(refuse(
            field,
            "url must not carry credentials: use bind_dn and bind_password_env",
        ));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// Filters are the operator's, passed to the server as written; only their
/// syntax is checked here so a typo fails `validate`, not a 3 a.m. run. The
/// defaults are known to be valid.
fn compile_filter(
    field: &str,
    value: Option<&Spanned<String>>,
    default: &str,
) -> Result<String, SourceConfigError> {
    let Some(value) = value else {
        return Ok(default.to_string());
    };
    let filter = value.value.trim();
    if ldap3::parse_filter(filter).is_err() {
        return Err(refuse(
            value,
            format!(
                "`{field}` {filter:?} is not a valid LDAP filter (RFC 4515): check the \
                 parentheses, and escape literal * ( ) \\ in values as \\2a \\28 \\29 \\5c"
            ),
        ));
    }
    Ok(filter.to_string())
}

/// An attribute name, or `default` (a valid name) when none is written.
fn compile_attribute(
    field: &str,
    value: Option<&Spanned<String>>,
    default: &str,
) -> Result<String, SourceConfigError> {
    let Some(value) = value else {
        return Ok(default.to_string());
    };
    let name = value.value.trim();
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ';'));
    if !valid {
        return Err(refuse(
            value,
            format!("`{field}` {name:?} is not an LDAP attribute name"),
        ));
    }
    Ok(name.to_string())
}

impl PasswordSource {
    /// Reads the bind password. An empty password is refused: LDAP treats a simple
    /// bind with an empty password as an anonymous bind that "succeeds".
    fn read(&self) -> Result<SecretString, LdapError> {
        match self {
            PasswordSource::Env(var) => match std::env::var(var) {
                Ok(value) if !value.is_empty() => Ok(SecretString::from(value)),
                _ => Err(LdapError::PasswordNotSet { var: var.clone() }),
            },
            PasswordSource::File(path) => {
                let text = secret::read(path).map_err(LdapError::password_file)?;
                let text = text.expose_secret();
                // Only the line ending an editor adds: spaces may be part of a password.
                let password = text
                    .strip_suffix('\n')
                    .map(|t| t.strip_suffix('\r').unwrap_or(t))
                    .unwrap_or(text);
                if password.is_empty() {
                    return Err(LdapError::PasswordFileEmpty { path: path.clone() });
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

/// What the fuzz target `ldap` reaches: DNs and entry values as a server sends them.
#[cfg(fuzzing)]
mod fuzzing {
    use super::{dn, entry};

    /// Normalises `dn` (and asserts the normal form is a fixed point, as DN
    /// indexes need), reads the entry's keys the ways a config may ask for
    /// them, its SID and its GUID bytes.
    pub(crate) fn entry(
        dn_text: &str,
        attrs: Vec<(String, Vec<String>)>,
        bin_attrs: Vec<(String, Vec<Vec<u8>>)>,
    ) {
        let normal = dn::normalize(dn_text);
        assert_eq!(
            dn::normalize(&normal),
            normal,
            "normalize is not idempotent"
        );
        let _ = dn::is_in_builtin(dn_text);
        let _ = dn::normalize(dn::strip_unique_member_uid(dn_text));
        let entry = entry::Entry {
            dn: dn_text.to_string(),
            attrs,
            bin_attrs,
        };
        for attribute in ["entryUUID", "objectGUID", "uid", "member"] {
            let _ = entry::key_of(&entry, attribute);
        }
        let _ = entry::Sid::of(&entry);
        for (_, values) in &entry.bin_attrs {
            for value in values {
                let _ = entry::guid_text(value);
                let _ = entry::Sid::parse(value);
            }
        }
        for (_, values) in &entry.attrs {
            for value in values {
                let _ = dn::normalize(dn::strip_unique_member_uid(value));
            }
        }
    }
}
