//! The `target:` section: the SCIM target as written ([`TargetConfig`]) and as
//! the client and executor need it ([`TargetSettings`]). A mistake is a
//! [`TargetConfigError`] at the offending field; the top-level config places
//! it in its file. The token is located here but read only when the target is
//! contacted ([`TokenSource::read`]), so an offline `plan` needs none.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::{Flavour, RateLimit};
use crate::retry::RetryPolicy;
use crate::secret;
use crate::yaml::parse_duration;

/// The `target:` section, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    kind: Spanned<String>,
    base_url: Spanned<String>,
    #[serde(default)]
    token_env: Option<String>,
    #[serde(default)]
    token_file: Option<String>,
    #[serde(default)]
    rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    concurrency: Option<Spanned<RawConcurrency>>,
    #[serde(default)]
    concurrency_max: Option<Spanned<u32>>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    page_size: Option<u32>,
    #[serde(default)]
    member_chunk: Option<u32>,
    #[serde(default)]
    retry: Option<RawRetry>,
    #[serde(default)]
    user_limit: Option<u64>,
    #[serde(default)]
    verified_domains: Vec<String>,
}

/// `concurrency:` as written: `auto` or a number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawConcurrency {
    Fixed(u32),
    Word(String),
}

/// How many requests the client keeps in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Concurrency {
    /// Exactly this many (`concurrency: N`).
    Fixed(usize),
    /// Found from the target's answers, never above `ceiling`
    /// (`concurrency: auto`, `concurrency_max`).
    Auto { ceiling: usize },
}

impl Concurrency {
    /// The default: `auto` under [`DEFAULT_CONCURRENCY_MAX`].
    pub const DEFAULT: Concurrency = Concurrency::Auto {
        ceiling: DEFAULT_CONCURRENCY_MAX,
    };

    /// The most requests ever in flight: the executor's slots.
    pub fn slots(self) -> usize {
        match self {
            Concurrency::Fixed(n) => n,
            Concurrency::Auto { ceiling } => ceiling,
        }
    }

    /// The ceiling of an adaptive limit; `None` when fixed.
    pub fn adaptive(self) -> Option<usize> {
        match self {
            Concurrency::Fixed(_) => None,
            Concurrency::Auto { ceiling } => Some(ceiling),
        }
    }
}

/// `concurrency_max` when not written.
pub const DEFAULT_CONCURRENCY_MAX: usize = 32;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    per_second: u32,
    #[serde(default)]
    burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    max_elapsed: Option<Spanned<String>>,
}

/// A mistake in the `target:` section, at the line and column of the offending
/// field. The top-level config turns it into a located error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TargetConfigError {
    pub location: Location,
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

fn refused(location: &Location, message: String, hint: &str) -> TargetConfigError {
    TargetConfigError {
        location: *location,
        message,
        hint: hint.to_string(),
    }
}

/// The SCIM target, as the client and executor need it.
#[derive(Clone, Debug)]
pub struct TargetSettings {
    pub flavour: Flavour,
    pub base_url: String,
    pub token: TokenSource,
    pub rate_limit: Option<RateLimit>,
    pub concurrency: Concurrency,
    pub timeout: Duration,
    /// Resources per list request; `None`: the target's advertised
    /// `maxResults` (within the flavour's limit).
    pub page_size: Option<u32>,
    pub member_chunk: usize,
    pub retry: RetryPolicy,
    /// Warn before the directory grows past this many users (Atlassian's
    /// per-directory limit; unconfirmed whether 5,000 or 20,000 holds).
    pub user_limit: Option<u64>,
    pub verified_domains: Vec<String>,
}

impl TargetConfig {
    /// Resolves `token_file` against the config file's folder and checks the
    /// options. A mistake is reported at the offending field.
    pub fn compile(&self, config_dir: &Path) -> Result<TargetSettings, TargetConfigError> {
        let flavour = match self.kind.value.as_str() {
            "atlassian" => Flavour::Atlassian,
            "scim" => Flavour::Generic,
            other => {
                return Err(refused(
                    &self.kind.referenced,
                    format!("unknown target kind {other:?}"),
                    "use `atlassian` or `scim` (any SCIM 2.0 server)",
                ));
            }
        };
        let base_url = self.base_url.value.trim_end_matches('/').to_string();
        check_base_url(&base_url)
            .map_err(|(message, hint)| refused(&self.base_url.referenced, message, hint))?;
        let token = match (&self.token_env, &self.token_file) {
            (Some(env), None) => TokenSource::Env(env.clone()),
            // An absolute path replaces the folder.
            (None, Some(file)) => TokenSource::File(config_dir.join(file)),
            _ => {
                return Err(refused(
                    &self.base_url.referenced,
                    "the target needs exactly one of `token_env` or `token_file`".into(),
                    "tokens are never written in the config itself",
                ));
            }
        };
        let concurrency = self.concurrency()?;
        let timeout = match &self.timeout {
            None => Duration::from_secs(30),
            Some(t) => parse_duration(&t.value).map_err(|e| {
                refused(&t.referenced, format!("timeout: {e}"), "write it like 30s")
            })?,
        };
        Ok(TargetSettings {
            flavour,
            base_url,
            token,
            rate_limit: self.rate_limit.as_ref().map(|r| RateLimit {
                per_second: r.per_second.max(1),
                burst: r.burst.unwrap_or(r.per_second).max(1),
            }),
            concurrency,
            timeout,
            page_size: self.page_size.map(|p| p.clamp(1, 1000)),
            member_chunk: self.member_chunk.unwrap_or(100).clamp(1, 1000) as usize,
            retry: self.retry()?,
            user_limit: self.user_limit,
            verified_domains: self.verified_domains.clone(),
        })
    }

    /// `concurrency:` and `concurrency_max:`; [`Concurrency::DEFAULT`] when
    /// neither is written, `auto` when only the ceiling is.
    fn concurrency(&self) -> Result<Concurrency, TargetConfigError> {
        let ceiling = match &self.concurrency_max {
            None => DEFAULT_CONCURRENCY_MAX,
            Some(c) if (1..=64).contains(&c.value) => c.value as usize,
            Some(c) => {
                return Err(refused(
                    &c.referenced,
                    format!("concurrency_max {} is out of range", c.value),
                    "use 1 to 64 (the most requests `concurrency: auto` keeps in flight)",
                ));
            }
        };
        let Some(c) = &self.concurrency else {
            // A ceiling written alone asks for the adaptive limit under it.
            return Ok(match self.concurrency_max {
                Some(_) => Concurrency::Auto { ceiling },
                None => Concurrency::DEFAULT,
            });
        };
        match &c.value {
            RawConcurrency::Fixed(n) if (1..=64).contains(n) => {
                if let Some(max) = &self.concurrency_max {
                    return Err(refused(
                        &max.referenced,
                        format!(
                            "concurrency_max applies to `concurrency: auto`, and concurrency is {n}"
                        ),
                        "remove concurrency_max, or write `concurrency: auto`",
                    ));
                }
                Ok(Concurrency::Fixed(*n as usize))
            }
            RawConcurrency::Fixed(n) => Err(refused(
                &c.referenced,
                format!("concurrency {n} is out of range"),
                "use 1 to 64, or `auto`",
            )),
            RawConcurrency::Word(w) if w == "auto" => Ok(Concurrency::Auto { ceiling }),
            RawConcurrency::Word(w) => Err(refused(
                &c.referenced,
                format!("concurrency {w:?} is neither a number nor `auto`"),
                "use a number from 1 to 64 (4 when not written) or `auto`",
            )),
        }
    }

    /// `retry:` over the defaults.
    fn retry(&self) -> Result<RetryPolicy, TargetConfigError> {
        let mut retry = RetryPolicy::default();
        if let Some(r) = &self.retry {
            if let Some(n) = r.max_attempts {
                retry.max_attempts = n.max(1);
            }
            if let Some(e) = &r.max_elapsed {
                retry.max_elapsed = parse_duration(&e.value).map_err(|err| {
                    refused(
                        &e.referenced,
                        format!("retry.max_elapsed: {err}"),
                        "write it like 5m",
                    )
                })?;
            }
        }
        Ok(retry)
    }
}

/// The base URL is http(s), parses, and carries no credentials: a
/// `user:password@` part would be printed by `validate` and sent as Basic auth
/// beside the token. The URL is not repeated in the message when it has them.
fn check_base_url(base_url: &str) -> Result<(), (String, &'static str)> {
    const EXAMPLE: &str = "e.g. https://api.atlassian.com/scim/directory/<directory id>";
    if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
        return Err((
            format!("base_url {base_url:?} is not an http(s) URL"),
            EXAMPLE,
        ));
    }
    let url = url::Url::parse(base_url)
        .map_err(|e| (format!("base_url is not a valid URL ({e})"), EXAMPLE))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err((
            "base_url must not carry credentials (user:password@)".into(),
            "remove them from the URL; the token comes from token_env or token_file",
        ));
    }
    Ok(())
}

impl TargetSettings {
    /// A warning when the token would cross the network in clear text: a plain
    /// `http://` base URL to a host other than this machine.
    pub fn cleartext_warning(&self) -> Option<String> {
        let url = url::Url::parse(&self.base_url).ok()?;
        if url.scheme() != "http" || is_loopback(&url) {
            return None;
        }
        Some(format!(
            "target base_url {} is plain http:// to another host: the SCIM token and every user's data cross the network in clear text; use https://",
            url.host_str().unwrap_or_default()
        ))
    }
}

fn is_loopback(url: &url::Url) -> bool {
    url.host().is_some_and(|host| is_loopback_host(&host))
}

/// Whether `host` is this machine: a loopback address, `localhost` or a name
/// under it.
pub(crate) fn is_loopback_host<S: AsRef<str>>(host: &url::Host<S>) -> bool {
    match host {
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
        url::Host::Domain(name) => {
            let name = name.as_ref().trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    }
}

/// Where the SCIM token comes from. It is read only when the target is contacted.
#[derive(Clone, Debug)]
pub enum TokenSource {
    Env(String),
    File(PathBuf),
}

/// The SCIM token cannot be read: what is wrong, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TokenError {
    pub message: String,
    pub hint: String,
}

impl TokenSource {
    pub fn read(&self) -> Result<SecretString, TokenError> {
        match self {
            TokenSource::Env(name) => match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => Ok(SecretString::from(v.trim().to_string())),
                _ => Err(TokenError {
                    message: format!("the SCIM token variable {name} is not set"),
                    hint: format!("export {name}=<the directory's API key> before running idsync"),
                }),
            },
            TokenSource::File(path) => read_secret_file(path),
        }
    }
}

/// Reads the SCIM token from `path`, a file held to the rule every secret
/// file is ([`secret::check_secret_file`]).
fn read_secret_file(path: &Path) -> Result<SecretString, TokenError> {
    let text = secret::read(path).map_err(|e| TokenError {
        message: e.message("token file"),
        hint: e.hint("token_file"),
    })?;
    let token = text.expose_secret().trim();
    if token.is_empty() {
        return Err(TokenError {
            message: format!("token file {} is empty", path.display()),
            hint: "write the directory's API key into it".to_string(),
        });
    }
    Ok(SecretString::from(token.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(unix)]
    use crate::secret::{ROOT_UID, check_secret_file, current_uid};

    fn target_at(url: &str) -> TargetSettings {
        TargetSettings {
            flavour: Flavour::Generic,
            base_url: url.into(),
            token: TokenSource::Env("T".into()),
            rate_limit: None,
            concurrency: Concurrency::Fixed(4),
            timeout: Duration::from_secs(30),
            page_size: None,
            member_chunk: 100,
            retry: RetryPolicy::default(),
            user_limit: None,
            verified_domains: vec![],
        }
    }

    #[test]
    fn plain_http_to_another_host_is_warned_about() {
        for url in [
            "http://scim.example.com/v2",
            "http://10.0.0.5:8080/scim",
            "http://[2001:db8::1]/scim",
        ] {
            let w = target_at(url).cleartext_warning();
            assert!(
                w.as_deref().is_some_and(|w| w.contains("clear text")),
                "{url}: {w:?}"
            );
        }
        for url in [
            "https://scim.example.com/v2",
            "http://127.0.0.1:8080/v2",
            "http://127.5.5.5/v2",
            "http://localhost:8080/v2",
            "http://[::1]:8080/v2",
        ] {
            assert_eq!(target_at(url).cleartext_warning(), None, "{url}");
        }
    }

    /// A folder only this user can write, with a token file of `mode` in it.
    #[cfg(unix)]
    fn token_in_private_folder(mode: u32) -> (tempfile::TempDir, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "tok-abc\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, file)
    }

    #[cfg(unix)]
    fn secret_message(result: Result<SecretString, TokenError>) -> String {
        match result {
            Ok(_) => panic!("the token file was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_private_token_file_is_read() {
        use secrecy::ExposeSecret;
        let (_dir, file) = token_in_private_folder(0o600);
        let token = read_secret_file(&file).expect("read");
        assert_eq!(token.expose_secret(), "tok-abc");
    }

    /// systemd's credentials folder (`/run/credentials/UNIT`): the folder is
    /// the service user's, mode 0500, each credential a file of mode 0400.
    #[cfg(unix)]
    #[test]
    fn a_token_file_in_a_systemd_credentials_folder_is_accepted() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, file) = token_in_private_folder(0o400);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
        let token = read_secret_file(&file);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(token.expect("accepted").expose_secret(), "tok-abc");
    }

    #[cfg(unix)]
    #[test]
    fn a_token_file_readable_by_others_or_owned_by_someone_else_is_refused() {
        let (_dir, file) = token_in_private_folder(0o640);
        // Readable by a group that is not idsync's own.
        let other_group = crate::secret::current_gid().wrapping_add(1);
        let e = crate::secret::check_secret_file_as(&file, current_uid(), other_group)
            .unwrap_err()
            .to_string();
        assert!(e.contains("can be read by other users"), "{e}");
        let (_dir, file) = token_in_private_folder(0o604);
        assert!(secret_message(read_secret_file(&file)).contains("can be read by other users"));
        let (_dir, file) = token_in_private_folder(0o600);
        // A file of user A read by idsync running as user B (neither root).
        let me = current_uid();
        let (owner, runner) = if me == ROOT_UID {
            std::os::unix::fs::chown(&file, Some(4242), None).expect("chown as root");
            (4242, 4243)
        } else {
            (me, if me == 4242 { 4243 } else { 4242 })
        };
        let e = check_secret_file(&file, runner).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "belongs to user id {owner}, not to idsync's user ({runner}) or root"
            )),
            "{e}"
        );
        // root's own files are trusted.
        if me == ROOT_UID {
            std::os::unix::fs::chown(&file, Some(ROOT_UID), None).unwrap();
            assert!(check_secret_file(&file, 4243).is_ok());
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_token_file_in_a_folder_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, file) = token_in_private_folder(0o600);
        for mode in [0o777, 0o1777, 0o770, 0o702] {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let e = secret_message(read_secret_file(&file));
            assert!(
                e.contains("which other users can write to"),
                "{mode:o}: {e}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_or_a_folder_as_token_file_is_refused_without_blocking() {
        let (dir, _) = token_in_private_folder(0o600);
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        // No writer: opening it would block this test forever.
        let e = secret_message(read_secret_file(&fifo));
        assert!(e.contains("is a FIFO, not a regular file"), "{e}");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let e = secret_message(read_secret_file(&sub));
        assert!(e.contains("is a folder, not a regular file"), "{e}");
    }
}
