//! `notify.email:` — alerts sent through an SMTP server: where it is, how the
//! connection is encrypted, who sends and who receives, and the login. Every
//! mistake is found here, by `validate`. The password comes from an
//! environment variable or a secret file and is read only when a message is
//! sent (or `check` logs in); it is never logged or printed.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use lettre::message::Mailbox;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::env::is_variable_name;
use super::error::ConfigError;
use crate::scim::config::is_loopback_host;

/// `notify.email:`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEmail {
    smtp: Spanned<String>,
    from: Spanned<String>,
    to: Spanned<Vec<String>>,
    #[serde(default)]
    username: Option<Spanned<String>>,
    #[serde(default)]
    password_env: Option<Spanned<String>>,
    #[serde(default)]
    password_file: Option<Spanned<String>>,
    #[serde(default)]
    tls: Option<Spanned<SmtpTls>>,
}

/// How the connection to the SMTP server is encrypted. The server's
/// certificate is always verified against the system's trust store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS before anything is sent; a
    /// server that does not offer it is an error (port 587 by default).
    #[serde(rename = "starttls")]
    StartTls,
    /// TLS from the first byte (port 465 by default).
    #[serde(rename = "implicit")]
    Implicit,
    /// No encryption: only to a server on this machine (port 25 by default).
    #[serde(rename = "none")]
    Plain,
}

impl SmtpTls {
    fn default_port(self) -> u16 {
        match self {
            SmtpTls::StartTls => 587,
            SmtpTls::Implicit => 465,
            SmtpTls::Plain => 25,
        }
    }

    /// As written in the config.
    pub fn name(self) -> &'static str {
        match self {
            SmtpTls::StartTls => "starttls",
            SmtpTls::Implicit => "implicit",
            SmtpTls::Plain => "none",
        }
    }
}

/// Where the SMTP password comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SmtpPassword {
    Env(String),
    File(PathBuf),
}

/// The login to the SMTP server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpLogin {
    pub username: String,
    pub password: SmtpPassword,
}

/// Where and how to send alert emails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmailSettings {
    /// The server's host name or IP address (an IPv6 address without brackets).
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
    pub login: Option<SmtpLogin>,
}

impl SmtpPassword {
    /// Reads the password: all of the variable, or the file without its line
    /// ending. An empty password is refused.
    pub fn read(&self) -> Result<SecretString, ConfigError> {
        let refused = |message: String, hint: String| ConfigError::Secret { message, hint };
        match self {
            SmtpPassword::Env(name) => match std::env::var(name) {
                Ok(value) if !value.is_empty() => Ok(SecretString::from(value)),
                _ => Err(refused(
                    format!("the SMTP password variable {name} is not set"),
                    format!("export {name}=<the mail account's password> before running idsync"),
                )),
            },
            SmtpPassword::File(path) => {
                let text = crate::secret::read(path).map_err(|e| {
                    refused(
                        e.message("SMTP password file"),
                        e.hint("notify.email.password_file"),
                    )
                })?;
                let password = text.expose_secret().trim_end_matches(['\r', '\n']);
                if password.is_empty() {
                    return Err(refused(
                        format!("SMTP password file {} is empty", path.display()),
                        "write the mail account's password into it".into(),
                    ));
                }
                Ok(SecretString::from(password.to_string()))
            }
        }
    }
}

impl EmailSettings {
    /// One line for `validate`: the server, the encryption, the addresses and
    /// where the password comes from (never the password).
    pub fn describe(&self) -> String {
        let login = match &self.login {
            None => "no login".to_string(),
            Some(SmtpLogin { username, password }) => format!(
                "login {username} with the password from {}",
                match password {
                    SmtpPassword::Env(name) => format!("${name}"),
                    SmtpPassword::File(path) => path.display().to_string(),
                }
            ),
        };
        let to: Vec<String> = self.to.iter().map(ToString::to_string).collect();
        format!(
            "{} (tls: {}), {login}, from {} to {}",
            self.server(),
            self.tls.name(),
            self.from,
            to.join(", ")
        )
    }

    /// `host:port`, an IPv6 address in brackets.
    pub fn server(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Compiles `notify.email:` of `file`; a password file is relative to `base`.
    pub(super) fn compile(
        raw: &Spanned<RawEmail>,
        file: &str,
        base: &Path,
    ) -> Result<Self, ConfigError> {
        let raw = &raw.value;
        let at = |location: &Location, message: String, hint: &str| {
            ConfigError::at(file, location, message, hint.to_string())
        };
        let (host, port) = parse_server(&raw.smtp.value)
            .map_err(|(message, hint)| at(&raw.smtp.referenced, message, hint))?;
        let tls = raw.tls.as_ref().map_or(SmtpTls::StartTls, |t| t.value);
        if tls == SmtpTls::Plain && !host_is_loopback(&host) {
            let location = raw
                .tls
                .as_ref()
                .map_or(raw.smtp.referenced, |t| t.referenced);
            return Err(at(
                &location,
                format!(
                    "notify.email.tls: none would send the alerts (and the password) to {host} in clear text"
                ),
                "use `tls: starttls` (port 587) or `tls: implicit` (port 465); `none` is allowed only for a mail server on this machine (localhost, 127.0.0.1, ::1)",
            ));
        }
        let from = mailbox(&raw.from.value).map_err(|e| {
            at(
                &raw.from.referenced,
                format!("notify.email.from: {e}"),
                MAILBOX_HINT,
            )
        })?;
        if raw.to.value.is_empty() {
            return Err(at(
                &raw.to.referenced,
                "notify.email.to names no recipient".into(),
                "list one address or more, e.g. `to: [it-ops@example.com]`",
            ));
        }
        let to = raw
            .to
            .value
            .iter()
            .map(|r| mailbox(r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                at(
                    &raw.to.referenced,
                    format!("notify.email.to: {e}"),
                    MAILBOX_HINT,
                )
            })?;
        let login =
            login(raw, base).map_err(|(location, message, hint)| at(&location, message, hint))?;
        Ok(EmailSettings {
            host,
            port: port.unwrap_or(tls.default_port()),
            tls,
            from,
            to,
            login,
        })
    }
}

const MAILBOX_HINT: &str =
    "write an address like idsync@example.com, or with a name: \"idsync <idsync@example.com>\"";

/// An address, with or without a display name.
fn mailbox(text: &str) -> Result<Mailbox, String> {
    Mailbox::from_str(text.trim()).map_err(|e| format!("{text:?} is not an email address ({e})"))
}

/// The login: a user name with exactly one password source, or neither.
fn login(
    raw: &RawEmail,
    base: &Path,
) -> Result<Option<SmtpLogin>, (Location, String, &'static str)> {
    const HINT: &str = "give `username` with one of `password_env` (an environment variable's name) or `password_file` (a file only idsync's user can read); the password itself never goes in the config";
    let password = match (&raw.password_env, &raw.password_file) {
        (Some(env), Some(_)) => {
            return Err((
                env.referenced,
                "notify.email: both `password_env` and `password_file` are set: keep one".into(),
                HINT,
            ));
        }
        (Some(env), None) => {
            let name = env.value.trim();
            if !is_variable_name(name) {
                return Err((
                    env.referenced,
                    format!(
                        "notify.email.password_env {name:?} is not an environment variable name"
                    ),
                    HINT,
                ));
            }
            Some((env.referenced, SmtpPassword::Env(name.to_string())))
        }
        (None, Some(file)) if file.value.trim().is_empty() => {
            return Err((
                file.referenced,
                "notify.email.password_file is empty".into(),
                HINT,
            ));
        }
        // An absolute path replaces the folder.
        (None, Some(file)) => Some((
            file.referenced,
            SmtpPassword::File(base.join(file.value.trim())),
        )),
        (None, None) => None,
    };
    match (&raw.username, password) {
        (Some(user), Some((_, password))) if !user.value.trim().is_empty() => Ok(Some(SmtpLogin {
            username: user.value.trim().to_string(),
            password,
        })),
        (Some(user), _) => Err((
            user.referenced,
            "notify.email.username needs a password (`password_env` or `password_file`), and may not be empty".into(),
            HINT,
        )),
        (None, Some((location, _))) => Err((
            location,
            "notify.email: a password without `username`".into(),
            HINT,
        )),
        (None, None) => Ok(None),
    }
}

/// `host`, `host:port`, `[IPv6]` or `[IPv6]:port`: the host (an IPv6 address
/// without brackets) and the port, when given.
fn parse_server(text: &str) -> Result<(String, Option<u16>), (String, &'static str)> {
    const HINT: &str = "write the server as host:port, e.g. `smtp: smtp.example.com:587` (an IPv6 address in brackets: [2001:db8::1]:587)";
    let text = text.trim();
    if text.contains("://") || text.contains('@') || text.contains('/') {
        return Err((
            format!("notify.email.smtp {text:?} is not host:port"),
            "write only host:port (the encryption is `tls:`, the login `username` and `password_env` or `password_file`)",
        ));
    }
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => {
            let Some((inside, after)) = rest.split_once(']') else {
                return Err((format!("notify.email.smtp {text:?}: unclosed ["), HINT));
            };
            match after {
                "" => (inside, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (inside, Some(port)),
                    None => {
                        return Err((format!("notify.email.smtp {text:?} is not host:port"), HINT));
                    }
                },
            }
        }
        None => match text.split_once(':') {
            Some((_, rest)) if rest.contains(':') => {
                return Err((
                    format!("notify.email.smtp {text:?}: an IPv6 address goes in brackets"),
                    HINT,
                ));
            }
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        },
    };
    let bracketed = text.starts_with('[');
    let parsed = if bracketed {
        url::Host::parse(&format!("[{host}]"))
    } else {
        url::Host::parse(host)
    };
    if host.is_empty() || parsed.is_err() {
        return Err((
            format!("notify.email.smtp {text:?} names no valid host"),
            HINT,
        ));
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                return Err((
                    format!("notify.email.smtp {text:?}: {p:?} is not a port"),
                    HINT,
                ));
            }
        },
    };
    Ok((host.to_string(), port))
}

/// Whether `host` (as [`parse_server`] returns it) is this machine.
fn host_is_loopback(host: &str) -> bool {
    let parsed = if host.contains(':') {
        url::Host::parse(&format!("[{host}]"))
    } else {
        url::Host::parse(host)
    };
    parsed.is_ok_and(|h| is_loopback_host(&h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_is_host_and_port_with_ipv6_in_brackets() {
        assert_eq!(
            parse_server("smtp.example.com:587").unwrap(),
            ("smtp.example.com".into(), Some(587))
        );
        assert_eq!(parse_server("mail").unwrap(), ("mail".into(), None));
        assert_eq!(parse_server("[::1]:25").unwrap(), ("::1".into(), Some(25)));
        assert_eq!(parse_server("[::1]").unwrap(), ("::1".into(), None));
        for bad in [
            "smtp://mail:25",
            "user:pw@mail:25",
            "::1:25",
            "mail:0",
            "mail:smtp",
            ":25",
            "[::1",
            "[::1]x",
            "bad host:25",
        ] {
            assert!(parse_server(bad).is_err(), "{bad}");
        }
        assert!(host_is_loopback("127.0.0.2"));
        assert!(host_is_loopback("::1"));
        assert!(host_is_loopback("localhost"));
        assert!(!host_is_loopback("mail.example.com"));
        assert!(!host_is_loopback("10.0.0.1"));
    }

    #[cfg(unix)]
    #[test]
    fn the_password_file_loses_its_line_ending_and_may_not_be_empty() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let path = dir.path().join("smtp-password");
        std::fs::write(&path, " pass word \n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let read = SmtpPassword::File(path.clone()).read().unwrap();
        assert_eq!(read.expose_secret(), " pass word ");
        std::fs::write(&path, "\n").unwrap();
        let e = SmtpPassword::File(path.clone()).read().unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = SmtpPassword::File(path).read().unwrap_err();
        assert!(e.to_string().contains("other users"), "{e}");
        assert_eq!(
            e.hint().as_deref(),
            Some(format!("chmod 600 {}", dir.path().join("smtp-password").display()).as_str())
        );
    }
}
