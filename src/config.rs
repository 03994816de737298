//! Configuration: the YAML file as written (`RawConfig`, lightly checked by serde)
//! and the compiled `Settings` every command runs on (paths resolved, mapping
//! compiled, limits parsed). Every mistake surfaces here, in `idsync validate`,
//! with the file, line and column. Secrets are located here but read only when a
//! command needs them (`TokenSource::read`), so an offline `plan` needs none.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::mapping::{Mapping, MappingError};
use crate::model::Domain;
use crate::plan::{OnRename, PlanOptions, Policy, RemovalLimit, RemoveAction, ReuseAccounts};
use crate::scim::{Flavour, RateLimit, RetryPolicy};
use crate::secret;
use crate::source::csv::{CsvConfig, CsvSettings};
use crate::source::entra::{EntraConfig, EntraSettings};
use crate::source::ldap::{LdapConfig, LdapSettings};
use crate::source::{Source, SourceConfigError};
use crate::yaml::{find_key, unknown_field};

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
}

// ---------------------------------------------------------------------------
// Raw configuration, as written.

/// The file as written; `S` is the `source:` section (see [`parse_raw`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig<S> {
    source: Spanned<S>,
    mapping: Option<Spanned<String>>,
    target: RawTarget,
    #[serde(default)]
    policy: RawPolicy,
    state: Spanned<String>,
    #[serde(default)]
    schedule: Option<Spanned<RawSchedule>>,
    #[serde(default)]
    history_days: Option<u32>,
    #[serde(default)]
    metrics_file: Option<Spanned<String>>,
    #[serde(default)]
    notify: Option<Spanned<RawNotify>>,
}

/// The `source:` section: `kind` picks the adapter, whose own config reads the
/// other fields.
#[derive(Debug)]
enum RawSource {
    Csv(CsvConfig),
    Ldap(Box<LdapConfig>),
    Entra(Box<EntraConfig>),
}

/// The adapters `source.kind` can name.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SourceKind {
    Csv,
    Ldap,
    Entra,
}

/// Reads only `source.kind`, ignoring everything else.
#[derive(Deserialize)]
struct SourceKindProbe {
    source: SourceKindOnly,
}

#[derive(Deserialize)]
struct SourceKindOnly {
    kind: SourceKind,
}

impl<S> RawConfig<S> {
    fn map_source<T>(self, f: impl FnOnce(S) -> T) -> RawConfig<T> {
        let RawConfig {
            source,
            mapping,
            target,
            policy,
            state,
            schedule,
            history_days,
            metrics_file,
            notify,
        } = self;
        RawConfig {
            source: Spanned::new(f(source.value), source.referenced, source.defined),
            mapping,
            target,
            policy,
            state,
            schedule,
            history_days,
            metrics_file,
            notify,
        }
    }
}

/// Parses the file. The `source:` section is read straight into the adapter's
/// config picked by its `kind`, so that the adapter's `Spanned` fields keep their
/// line and column: serde's internally tagged enums buffer a section before
/// picking the variant, and lose them. Hence two passes: `kind` first, then the
/// whole file with that adapter's config.
fn parse_raw(file: &str, text: &str) -> Result<RawConfig<RawSource>, ConfigError> {
    let error = |e: serde_saphyr::Error| yaml_error(file, text, &e);
    let probe: SourceKindProbe = serde_saphyr::from_str(text).map_err(error)?;
    let raw = match probe.source.kind {
        SourceKind::Csv => serde_saphyr::from_str::<RawConfig<Kinded<CsvConfig>>>(text)
            .map_err(error)?
            .map_source(|s| RawSource::Csv(s.0)),
        SourceKind::Ldap => serde_saphyr::from_str::<RawConfig<Kinded<LdapConfig>>>(text)
            .map_err(error)?
            .map_source(|s| RawSource::Ldap(Box::new(s.0))),
        SourceKind::Entra => serde_saphyr::from_str::<RawConfig<Kinded<EntraConfig>>>(text)
            .map_err(error)?
            .map_source(|s| RawSource::Entra(Box::new(s.0))),
    };
    Ok(raw)
}

/// A source section read as `T` once its `kind` key is skipped: `T` sees every
/// other key, straight from the YAML deserializer (nothing buffered).
#[derive(Debug)]
struct Kinded<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Kinded<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(kinded::WithoutKind(deserializer)).map(Kinded)
    }
}

mod kinded {
    //! A deserializer wrapper that hides one mapping key, `kind`.

    use std::fmt;

    use serde::de::{self, DeserializeSeed, IgnoredAny, IntoDeserializer, MapAccess, Visitor};

    pub(super) struct WithoutKind<D>(pub(super) D);

    impl<'de, D: de::Deserializer<'de>> de::Deserializer<'de> for WithoutKind<D> {
        type Error = D::Error;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.0.deserialize_map(SkipKind(visitor))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            name: &'static str,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, D::Error> {
            self.0.deserialize_struct(name, fields, SkipKind(visitor))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    struct SkipKind<V>(V);

    impl<'de, V: Visitor<'de>> Visitor<'de> for SkipKind<V> {
        type Value = V::Value;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.0.expecting(f)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
            self.0.visit_map(Keys(map))
        }
    }

    struct Keys<A>(A);

    impl<'de, A: MapAccess<'de>> MapAccess<'de> for Keys<A> {
        type Error = A::Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, A::Error> {
            loop {
                match self.0.next_key::<String>()? {
                    None => return Ok(None),
                    Some(key) if key == "kind" => {
                        self.0.next_value::<IgnoredAny>()?;
                    }
                    Some(key) => return seed.deserialize(key.into_deserializer()).map(Some),
                }
            }
        }

        fn next_value_seed<S: DeserializeSeed<'de>>(
            &mut self,
            seed: S,
        ) -> Result<S::Value, A::Error> {
            self.0.next_value_seed(seed)
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    kind: Spanned<String>,
    base_url: Spanned<String>,
    #[serde(default)]
    token_env: Option<String>,
    #[serde(default)]
    token_file: Option<String>,
    #[serde(default)]
    rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    concurrency: Option<Spanned<u32>>,
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    remove_action: Option<RemoveAction>,
    #[serde(default)]
    max_removals: Option<Spanned<RawLimit>>,
    #[serde(default)]
    max_member_removals: Option<Spanned<RawLimit>>,
    #[serde(default)]
    groups: Option<RawGroupPolicy>,
    #[serde(default)]
    skip_out_of_scope_deletions: bool,
    #[serde(default)]
    protect: Option<RawProtect>,
    /// Whether a new key given a leaver's address takes over the leaver's
    /// account: `never` (default: the create fails for that user, naming both
    /// keys, while the leaver's account holds the address) or `after_removal`
    /// (once the leaver is removed, the new key gets the same SCIM id,
    /// re-enabled with its own attributes). Under `remove_action: delete` the
    /// leaver's account is deleted first and a new one is created either way.
    #[serde(default)]
    reuse_accounts: Option<ReuseAccounts>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawLimit {
    Count(u64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroupPolicy {
    #[serde(default)]
    provision: Option<bool>,
    #[serde(default)]
    delete: Option<bool>,
    #[serde(default)]
    on_rename: Option<OnRename>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProtect {
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    cron: Option<String>,
}

/// `notify:` — a chat webhook told about cycles that need a person.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    webhook_url_env: String,
    #[serde(default)]
    on: Option<Vec<NotifyEvent>>,
}

// ---------------------------------------------------------------------------
// Compiled settings.

/// What `notify:` can be told about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    /// A guard stopped the cycle (exit 3).
    GuardStop,
    /// The target entered quarantine (scheduled cycles are held back).
    Quarantine,
    /// The cycle left operations failed (exit 1), or could not run at all.
    Failures,
}

/// Where and when to post a notification. The webhook URL is a secret (it
/// alone lets anyone post): it is read from the environment when a message is
/// sent, and never logged.
#[derive(Clone, Debug)]
pub struct NotifySettings {
    pub webhook_url_env: String,
    pub on: Vec<NotifyEvent>,
}

/// Where the SCIM token comes from. It is read only when the target is contacted.
#[derive(Clone, Debug)]
pub enum TokenSource {
    Env(String),
    File(PathBuf),
}

impl TokenSource {
    pub fn read(&self) -> Result<SecretString, ConfigError> {
        match self {
            TokenSource::Env(name) => match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => Ok(SecretString::from(v.trim().to_string())),
                _ => Err(ConfigError::Secret {
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
fn read_secret_file(path: &Path) -> Result<SecretString, ConfigError> {
    let text = secret::read(path)
        .map_err(|e| secret_error(e.message("token file"), e.hint("token_file")))?;
    let token = text.expose_secret().trim();
    if token.is_empty() {
        return Err(ConfigError::Secret {
            message: format!("token file {} is empty", path.display()),
            hint: "write the directory's API key into it".to_string(),
        });
    }
    Ok(SecretString::from(token.to_string()))
}

fn secret_error(message: String, hint: String) -> ConfigError {
    ConfigError::Secret { message, hint }
}

/// The SCIM target, as the client and executor need it.
#[derive(Clone, Debug)]
pub struct TargetSettings {
    pub flavour: Flavour,
    pub base_url: String,
    pub token: TokenSource,
    pub rate_limit: Option<RateLimit>,
    pub concurrency: usize,
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

/// Which directory to read: one adapter's compiled settings.
#[derive(Clone, Debug)]
pub enum SourceSettings {
    Csv(CsvSettings),
    Ldap(Box<LdapSettings>),
    Entra(Box<EntraSettings>),
}

impl SourceSettings {
    /// The configured adapter.
    pub fn adapter(&self) -> &dyn Source {
        match self {
            SourceSettings::Csv(csv) => csv,
            SourceSettings::Ldap(ldap) => ldap.as_ref(),
            SourceSettings::Entra(entra) => entra.as_ref(),
        }
    }
}

/// When the daemon runs a cycle.
#[derive(Clone, Debug)]
pub enum Schedule {
    Interval(Duration),
    Cron(Box<cron::Schedule>),
}

/// Everything a command needs, compiled once.
#[derive(Debug)]
pub struct Settings {
    pub config_path: PathBuf,
    /// Changes whenever the config or the mapping text changes.
    pub fingerprint: String,
    pub source: SourceSettings,
    pub mapping: Mapping,
    pub mapping_path: PathBuf,
    pub target: TargetSettings,
    pub policy: Policy,
    pub state_path: PathBuf,
    pub schedule: Schedule,
    pub history_days: u32,
    /// Prometheus text written after every cycle (`metrics_file:` or `--metrics-file`).
    pub metrics_file: Option<PathBuf>,
    pub notify: Option<NotifySettings>,
}

impl Settings {
    /// Reads, expands and compiles the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Settings::compile(path, &text)
    }

    /// What the planner needs from the config.
    pub fn plan_options(&self) -> PlanOptions {
        PlanOptions {
            policy: self.policy.clone(),
            config_fingerprint: self.fingerprint.clone(),
            user_limit: self.target.user_limit,
            target_rules: Default::default(),
            notes: Vec::new(),
        }
    }

    fn compile(path: &Path, text: &str) -> Result<Settings, ConfigError> {
        let file = path.display().to_string();
        let expanded = expand_env(text, &file)?;
        let raw = parse_raw(&file, &expanded)?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let at =
            |loc: &serde_saphyr::Location, message: String, hint: Option<String>| ConfigError::At {
                file: file.clone(),
                line: loc.line(),
                column: loc.column(),
                message,
                hint,
            };

        // An adapter's mistake is located at the offending field.
        let refused = |e: SourceConfigError| at(&e.location, e.message, Some(e.hint));
        let source = match raw.source.value {
            RawSource::Csv(csv) => SourceSettings::Csv(csv.compile(&base).map_err(refused)?),
            RawSource::Ldap(ldap) => {
                SourceSettings::Ldap(Box::new(ldap.compile(&base).map_err(refused)?))
            }
            RawSource::Entra(entra) => {
                SourceSettings::Entra(Box::new(entra.compile(&base).map_err(refused)?))
            }
        };

        let target = compile_target(&raw.target, &resolve, &at)?;
        let (mapping_path, mapping) = match &raw.mapping {
            Some(m) => {
                let p = resolve(&m.value);
                if !p.exists() {
                    return Err(at(
                        &m.referenced,
                        format!("mapping file {} does not exist", p.display()),
                        Some("paths are relative to the config file's folder".into()),
                    ));
                }
                let mapping = Mapping::load(&p)?;
                (p, mapping)
            }
            None => {
                return Err(ConfigError::File {
                    file,
                    message: "no `mapping:` file is configured".into(),
                    hint: Some("add `mapping: mappings/csv.yaml` (see the README)".into()),
                });
            }
        };
        let mapping_text = std::fs::read(&mapping_path).map_err(|source| ConfigError::Read {
            path: mapping_path.clone(),
            source,
        })?;

        let policy = compile_policy(&raw.policy, &target, &at)?;

        let schedule = match &raw.schedule {
            None => Schedule::Interval(Duration::from_secs(40 * 60)),
            Some(s) => match (&s.value.interval, &s.value.cron) {
                (Some(i), None) => Schedule::Interval(parse_duration(i).map_err(|e| {
                    at(
                        &s.referenced,
                        format!("schedule.interval: {e}"),
                        Some("write it like 40m or 1h".into()),
                    )
                })?),
                (None, Some(c)) => Schedule::Cron(Box::new(parse_cron(c).map_err(|e| {
                    at(
                        &s.referenced,
                        format!("schedule.cron {c:?}: {e}"),
                        Some("use the 5-field form, e.g. \"*/40 * * * *\"".into()),
                    )
                })?)),
                _ => {
                    return Err(at(
                        &s.referenced,
                        "schedule needs exactly one of `interval` or `cron`".into(),
                        Some("e.g. `schedule: { interval: 40m }`".into()),
                    ));
                }
            },
        };

        let notify = match &raw.notify {
            None => None,
            Some(n) => {
                let name = n.value.webhook_url_env.trim();
                if name.is_empty()
                    || name.contains(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                {
                    return Err(at(
                        &n.referenced,
                        format!("notify.webhook_url_env {name:?} is not an environment variable name"),
                        Some("name the variable that holds the webhook URL, e.g. `webhook_url_env: IDSYNC_WEBHOOK_URL`; the URL itself is a secret and never goes in the config".into()),
                    ));
                }
                Some(NotifySettings {
                    webhook_url_env: name.to_string(),
                    on: n.value.on.clone().unwrap_or_else(|| {
                        vec![
                            NotifyEvent::GuardStop,
                            NotifyEvent::Quarantine,
                            NotifyEvent::Failures,
                        ]
                    }),
                })
            }
        };

        let mut hasher = blake3::Hasher::new();
        hasher.update(text.as_bytes());
        hasher.update(&[0]);
        hasher.update(&mapping_text);
        let fingerprint = hasher.finalize().to_hex()[..16].to_string();

        Ok(Settings {
            config_path: path.to_path_buf(),
            fingerprint,
            source,
            mapping,
            mapping_path,
            target,
            policy,
            state_path: resolve(&raw.state.value),
            schedule,
            history_days: raw.history_days.unwrap_or(30),
            metrics_file: raw.metrics_file.as_ref().map(|m| resolve(&m.value)),
            notify,
        })
    }
}

type At<'a> = dyn Fn(&serde_saphyr::Location, String, Option<String>) -> ConfigError + 'a;

fn compile_target(
    raw: &RawTarget,
    resolve: &dyn Fn(&str) -> PathBuf,
    at: &At<'_>,
) -> Result<TargetSettings, ConfigError> {
    let flavour = match raw.kind.value.as_str() {
        "atlassian" => Flavour::Atlassian,
        "scim" => Flavour::Generic,
        other => {
            return Err(at(
                &raw.kind.referenced,
                format!("unknown target kind {other:?}"),
                Some("use `atlassian` or `scim` (any SCIM 2.0 server)".into()),
            ));
        }
    };
    let base_url = raw.base_url.value.trim_end_matches('/').to_string();
    check_base_url(&base_url)
        .map_err(|(message, hint)| at(&raw.base_url.referenced, message, Some(hint.into())))?;
    let token = match (&raw.token_env, &raw.token_file) {
        (Some(env), None) => TokenSource::Env(env.clone()),
        (None, Some(file)) => TokenSource::File(resolve(file)),
        _ => {
            return Err(at(
                &raw.base_url.referenced,
                "the target needs exactly one of `token_env` or `token_file`".into(),
                Some("tokens are never written in the config itself".into()),
            ));
        }
    };
    let concurrency = match &raw.concurrency {
        None => 4,
        Some(c) if c.value >= 1 && c.value <= 64 => c.value as usize,
        Some(c) => {
            return Err(at(
                &c.referenced,
                format!("concurrency {} is out of range", c.value),
                Some("use 1 to 64".into()),
            ));
        }
    };
    let timeout = match &raw.timeout {
        None => Duration::from_secs(30),
        Some(t) => parse_duration(&t.value).map_err(|e| {
            at(
                &t.referenced,
                format!("timeout: {e}"),
                Some("write it like 30s".into()),
            )
        })?,
    };
    let mut retry = RetryPolicy::default();
    if let Some(r) = &raw.retry {
        if let Some(n) = r.max_attempts {
            retry.max_attempts = n.max(1);
        }
        if let Some(e) = &r.max_elapsed {
            retry.max_elapsed = parse_duration(&e.value).map_err(|err| {
                at(
                    &e.referenced,
                    format!("retry.max_elapsed: {err}"),
                    Some("write it like 5m".into()),
                )
            })?;
        }
    }
    Ok(TargetSettings {
        flavour,
        base_url,
        token,
        rate_limit: raw.rate_limit.as_ref().map(|r| RateLimit {
            per_second: r.per_second.max(1),
            burst: r.burst.unwrap_or(r.per_second).max(1),
        }),
        concurrency,
        timeout,
        page_size: raw.page_size.map(|p| p.clamp(1, 1000)),
        member_chunk: raw.member_chunk.unwrap_or(100).clamp(1, 1000) as usize,
        retry,
        user_limit: raw.user_limit,
        verified_domains: raw.verified_domains.clone(),
    })
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
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
        None => false,
    }
}

fn compile_policy(
    raw: &RawPolicy,
    target: &TargetSettings,
    at: &At<'_>,
) -> Result<Policy, ConfigError> {
    let mut policy = Policy {
        member_chunk: target.member_chunk,
        target_renames_groups: target.flavour == Flavour::Generic,
        verified_domains: target
            .verified_domains
            .iter()
            .map(|d| Domain::new(d.trim().trim_start_matches('@')))
            .collect(),
        ..Policy::default()
    };
    if let Some(a) = raw.remove_action {
        policy.remove_action = a;
    }
    if let Some(r) = raw.reuse_accounts {
        policy.reuse_accounts = r;
    }
    if let Some(limit) = &raw.max_removals {
        policy.max_removals = parse_limit("max_removals", &limit.value).map_err(|message| {
            at(
                &limit.referenced,
                message,
                Some("write a count (10) or a percentage of managed users (\"5%\")".into()),
            )
        })?;
    }
    if let Some(limit) = &raw.max_member_removals {
        policy.max_member_removals =
            parse_limit("max_member_removals", &limit.value).map_err(|message| {
                at(
                    &limit.referenced,
                    message,
                    Some(
                        "write a count (25) or a percentage of managed group memberships (\"10%\")"
                            .into(),
                    ),
                )
            })?;
    }
    if let Some(g) = &raw.groups {
        policy.provision_groups = g.provision.unwrap_or(true);
        policy.delete_groups = g.delete.unwrap_or(false);
        policy.on_rename = g.on_rename.unwrap_or(OnRename::Keep);
    }
    policy.skip_out_of_scope_deletions = raw.skip_out_of_scope_deletions;
    if let Some(p) = &raw.protect {
        policy.protected_users = p.users.iter().map(|u| u.as_str().into()).collect();
        policy.protected_groups = p.groups.iter().map(|g| g.as_str().into()).collect();
    }
    Ok(policy)
}

/// Parses a removal limit; `key` names the setting in messages.
fn parse_limit(key: &str, raw: &RawLimit) -> Result<RemovalLimit, String> {
    match raw {
        RawLimit::Count(n) => Ok(RemovalLimit::Count(*n)),
        RawLimit::Text(t) => {
            let t = t.trim();
            if let Some(p) = t.strip_suffix('%') {
                let p: f64 = p
                    .trim()
                    .parse()
                    .map_err(|_| format!("{key} {t:?} is not a percentage"))?;
                if !(0.0..=100.0).contains(&p) {
                    return Err(format!("{key} {t:?} is not between 0% and 100%"));
                }
                Ok(RemovalLimit::Percent(p))
            } else {
                t.parse()
                    .map(RemovalLimit::Count)
                    .map_err(|_| format!("{key} {t:?} is neither a count nor a percentage"))
            }
        }
    }
}

/// Parses `40m`, `30s`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("{text:?} is not a duration ({e})"))
}

/// Accepts the usual 5-field cron form (minute first) as well as the 6- and
/// 7-field Quartz form the `cron` crate reads (seconds first).
pub fn parse_cron(text: &str) -> Result<cron::Schedule, String> {
    let fields = text.split_whitespace().count();
    let full = if fields == 5 {
        format!("0 {text}")
    } else {
        text.to_string()
    };
    full.parse::<cron::Schedule>().map_err(|e| e.to_string())
}

/// Expands `${VAR}` from the environment; `$$` is a literal `$`. An unset variable
/// is an error at its line and column.
fn expand_env(text: &str, file: &str) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    for (line_no, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        let mut column = 1;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            column += rest[..pos].chars().count();
            let after = &rest[pos + 1..];
            if let Some(stripped) = after.strip_prefix('$') {
                out.push('$');
                rest = stripped;
                column += 2;
            } else if let Some(body) = after.strip_prefix('{') {
                let Some(end) = body.find('}') else {
                    return Err(ConfigError::At {
                        file: file.to_string(),
                        line: line_no as u64 + 1,
                        column: column as u64,
                        message: "unterminated ${…}".into(),
                        hint: Some("write ${NAME}, or $$ for a literal dollar sign".into()),
                    });
                };
                let name = &body[..end];
                let valid = !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !name.starts_with(|c: char| c.is_ascii_digit());
                let value = if valid {
                    std::env::var(name).ok()
                } else {
                    None
                };
                match value {
                    // Expanded before YAML parsing: a line break would add keys
                    // (`remove_action: delete`), other controls corrupt values.
                    Some(v) if v.contains(char::is_control) => {
                        return Err(ConfigError::At {
                            file: file.to_string(),
                            line: line_no as u64 + 1,
                            column: column as u64,
                            message: format!(
                                "environment variable {name} holds a line break or another control character"
                            ),
                            hint: Some(format!(
                                "a ${{VAR}} value must be one line of text: fix {name} (e.g. strip the trailing newline)"
                            )),
                        });
                    }
                    Some(v) => out.push_str(&v),
                    None => {
                        return Err(ConfigError::At {
                            file: file.to_string(),
                            line: line_no as u64 + 1,
                            column: column as u64,
                            message: if valid {
                                format!("environment variable {name} is not set")
                            } else {
                                format!("${{{name}}} is not a valid variable reference")
                            },
                            hint: Some(if name == "CREDENTIALS_DIRECTORY" {
                                "systemd sets CREDENTIALS_DIRECTORY only for a unit with `LoadCredential=` (see examples/systemd/idsync.service); outside systemd, point token_file at the file itself".to_string()
                            } else {
                                format!("export {name}=… or write the value in the file")
                            }),
                        });
                    }
                }
                column += end + 3;
                rest = &body[end + 1..];
            } else {
                out.push('$');
                rest = after;
                column += 1;
            }
        }
        out.push_str(rest);
    }
    Ok(out)
}

fn yaml_error(file: &str, text: &str, e: &serde_saphyr::Error) -> ConfigError {
    let message = clean_message(&e.to_string());
    let hint = Some(
        "see the configuration reference in the README; unknown keys are refused so typos show"
            .into(),
    );
    let Some(loc) = e.location() else {
        return ConfigError::File {
            file: file.to_string(),
            message,
            hint,
        };
    };
    // serde reports an unknown key at the start of its enclosing mapping; point
    // at the key itself.
    let (line, column) = unknown_field(&message)
        .and_then(|field| find_key(text, field, loc.line(), loc.column()))
        .unwrap_or((loc.line(), loc.column()));
    ConfigError::At {
        file: file.to_string(),
        line,
        column,
        message,
        hint,
    }
}

/// serde-saphyr's message repeats the location (and renders a snippet after
/// it); we print our own location, so keep the message itself.
fn clean_message(text: &str) -> String {
    let first = text.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let re = regex::Regex::new(r"^line \d+ column \d+: |\s*at line \d+, column \d+$")
        .expect("static regex");
    re.replace_all(first, "").into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(unix)]
    use crate::secret::{ROOT_UID, check_secret_file, current_uid};

    #[test]
    fn expands_variables_and_reports_unset_ones_with_position() {
        // SAFETY: tests in this module are the only users of this variable.
        unsafe { std::env::set_var("IDSYNC_TEST_DIR_ID", "abc") };
        let out = expand_env("url: x/${IDSYNC_TEST_DIR_ID}/y $$5\n", "c.yaml").unwrap();
        assert_eq!(out, "url: x/abc/y $5\n");
        let err = expand_env("a: 1\nb: ${IDSYNC_SURELY_UNSET_VAR}\n", "c.yaml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "c.yaml:2:4: environment variable IDSYNC_SURELY_UNSET_VAR is not set"
        );
    }

    #[test]
    fn a_variable_with_a_line_break_cannot_add_keys() {
        // SAFETY: tests in this module are the only users of these variables.
        unsafe {
            std::env::set_var(
                "IDSYNC_TEST_NEWLINE_ID",
                "abc\npolicy:\n  remove_action: delete",
            );
            std::env::set_var("IDSYNC_TEST_TAB_ID", "abc\tdef");
            std::env::set_var("IDSYNC_TEST_CR_ID", "abc\r");
        }
        for name in [
            "IDSYNC_TEST_NEWLINE_ID",
            "IDSYNC_TEST_TAB_ID",
            "IDSYNC_TEST_CR_ID",
        ] {
            let err = expand_env(&format!("a: 1\nurl: x/${{{name}}}\n"), "c.yaml").unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "c.yaml:2:8: environment variable {name} holds a line break or another control character"
                )
            );
            assert!(err.hint().unwrap().contains(name));
        }
    }

    #[test]
    fn unknown_keys_are_reported_where_they_are() {
        let text = "a: 1\ntarget:\n  kind: scim\n  tokn_env: X\n";
        assert_eq!(find_key(text, "tokn_env", 3, 3), Some((4, 3)));
        assert_eq!(
            find_key("t: { kind: x, tokn_env: y }", "tokn_env", 1, 4),
            Some((1, 15))
        );
        assert_eq!(
            clean_message(
                "error: line 4 column 3: unknown field `x`, expected y at line 4, column 3"
            ),
            "unknown field `x`, expected y"
        );
    }

    #[test]
    fn parses_removal_limits() {
        let parse = |raw| parse_limit("max_removals", &raw);
        assert_eq!(parse(RawLimit::Count(7)), Ok(RemovalLimit::Count(7)));
        assert_eq!(
            parse(RawLimit::Text("5%".into())),
            Ok(RemovalLimit::Percent(5.0))
        );
        assert_eq!(
            parse(RawLimit::Text("12".into())),
            Ok(RemovalLimit::Count(12))
        );
        assert!(parse(RawLimit::Text("150%".into())).is_err());
        assert!(parse(RawLimit::Text("lots".into())).is_err());
        assert_eq!(RemovalLimit::Percent(5.0).resolve(50), 2);
    }

    #[test]
    fn a_bad_member_removal_limit_is_reported_at_its_value() {
        let mapping = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/csv.yaml");
        let text = format!(
            "mapping: {}\ntarget: {{ kind: scim, base_url: https://scim.example, token_env: T }}\nstate: s.db\nsource: {{ kind: csv, users: u.csv }}\npolicy:\n  max_removals: 5%\n  max_member_removals: 120%\n",
            mapping.display()
        );
        let e = Settings::compile(Path::new("/etc/idsync/idsync.yaml"), &text)
            .expect_err("refused")
            .to_string();
        assert!(
            e.starts_with(
                "/etc/idsync/idsync.yaml:7:24: max_member_removals \"120%\" is not between 0% and 100%"
            ),
            "{e}"
        );
    }

    fn compile_with(extra: &str) -> Result<Settings, ConfigError> {
        let mapping = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/csv.yaml");
        let text = format!(
            "mapping: {}\ntarget: {{ kind: scim, base_url: https://scim.example, token_env: T }}\nstate: s.db\nsource: {{ kind: csv, users: u.csv }}\n{extra}",
            mapping.display()
        );
        Settings::compile(Path::new("/etc/idsync/idsync.yaml"), &text)
    }

    #[test]
    fn metrics_file_and_notify_are_read_with_their_defaults() {
        let s = compile_with(
            "metrics_file: metrics/idsync.prom\nnotify: { webhook_url_env: IDSYNC_WEBHOOK }\n",
        )
        .expect("valid");
        assert_eq!(
            s.metrics_file.as_deref(),
            Some(Path::new("/etc/idsync/metrics/idsync.prom"))
        );
        let notify = s.notify.expect("notify");
        assert_eq!(notify.webhook_url_env, "IDSYNC_WEBHOOK");
        assert_eq!(
            notify.on,
            [
                NotifyEvent::GuardStop,
                NotifyEvent::Quarantine,
                NotifyEvent::Failures
            ]
        );
        let s = compile_with("notify: { webhook_url_env: W, on: [guard_stop] }\n").unwrap();
        assert_eq!(s.notify.unwrap().on, [NotifyEvent::GuardStop]);
        let e = compile_with("notify: { webhook_url_env: W, on: [sometimes] }\n").unwrap_err();
        assert!(e.to_string().contains("sometimes"), "{e}");
        // The URL itself is refused where a variable name belongs.
        let e =
            compile_with("notify: { webhook_url_env: \"https://hooks.example/x\" }\n").unwrap_err();
        assert!(
            e.to_string().contains("not an environment variable name"),
            "{e}"
        );
    }

    #[test]
    fn an_unset_credentials_directory_points_at_load_credential() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        // Not set in tests (no systemd unit runs them).
        if std::env::var_os("CREDENTIALS_DIRECTORY").is_some() {
            return;
        }
        std::fs::write(
            &path,
            "target: { token_file: \"${CREDENTIALS_DIRECTORY}/scim-token\" }\n",
        )
        .unwrap();
        let e = Settings::load(&path).unwrap_err();
        assert!(
            e.to_string().contains("CREDENTIALS_DIRECTORY is not set"),
            "{e}"
        );
        assert!(e.hint().unwrap().contains("LoadCredential="), "{e:?}");
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

    #[test]
    fn reuse_accounts_defaults_to_never_and_refuses_unknown_values_at_their_line() {
        let mapping = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/csv.yaml");
        let config = |policy: &str| {
            format!(
                "mapping: {}\ntarget: {{ kind: scim, base_url: https://scim.example, token_env: T }}\nstate: s.db\nsource: {{ kind: csv, users: u.csv }}\npolicy:\n  remove_action: disable\n{policy}",
                mapping.display()
            )
        };
        let path = Path::new("/etc/idsync/idsync.yaml");
        let default = Settings::compile(path, &config("")).expect("compiles");
        assert_eq!(default.policy.reuse_accounts, ReuseAccounts::Never);
        let after = Settings::compile(path, &config("  reuse_accounts: after_removal\n"))
            .expect("compiles");
        assert_eq!(after.policy.reuse_accounts, ReuseAccounts::AfterRemoval);
        let e = Settings::compile(path, &config("  reuse_accounts: always\n"))
            .expect_err("refused")
            .to_string();
        assert!(e.starts_with("/etc/idsync/idsync.yaml:7:"), "{e}");
        assert!(e.contains("after_removal"), "{e}");
    }

    /// Everything but the `source:` section's body; `source:` is line 7.
    const ALL_BUT_SOURCE: &str = "mapping: missing-mapping.yaml
target:
  kind: scim
  base_url: https://scim.example
  token_env: SCIM_TOKEN
state: state.db
source:";

    /// Compiles a config whose `source:` section is `source` (a flow mapping, or
    /// lines from line 8 on) and returns the error. The mapping file does not
    /// exist: a source that compiles fails there.
    fn config_error(source: &str) -> ConfigError {
        let text = format!("{ALL_BUT_SOURCE}{source}");
        Settings::compile(Path::new("/etc/idsync/idsync.yaml"), &text).expect_err("refused")
    }

    const LDAP: &str = "
  kind: ldap
  url: ldap://ldap.example.com
  bind_dn: cn=sync,dc=example,dc=com
  bind_password_env: LDAP_PASSWORD
  base_dn: dc=example,dc=com
";

    #[test]
    fn a_valid_source_gets_through() {
        for source in [
            LDAP,
            "\n  kind: csv\n  users: users.csv\n  delimiter: ';'\n",
        ] {
            let e = config_error(source).to_string();
            assert!(e.contains("mapping file"), "{e}");
        }
    }

    #[test]
    fn ldap_mistakes_are_reported_at_their_field() {
        // starttls with an ldaps:// URL: at `starttls`' value.
        let e = config_error(&format!(
            "{}  starttls: true\n",
            LDAP.replace("ldap://", "ldaps://")
        ));
        assert!(
            e.to_string().starts_with(
                "/etc/idsync/idsync.yaml:13:13: `starttls: true` needs an ldap:// URL"
            ),
            "{e}"
        );
        assert_eq!(
            e.hint().as_deref(),
            Some("see the LDAP source section of the README")
        );
        // No password source: at bind_dn, the account it belongs to.
        let e = config_error(&LDAP.replace("  bind_password_env: LDAP_PASSWORD\n", ""));
        assert!(
            e.to_string()
                .starts_with("/etc/idsync/idsync.yaml:10:12: no bind password"),
            "{e}"
        );
        // An unparsable timeout: at its value.
        let e = config_error(&format!("{LDAP}  page_size: 100\n  timeout: soon\n"));
        assert!(
            e.to_string()
                .starts_with("/etc/idsync/idsync.yaml:14:12: timeout \"soon\" is not a duration"),
            "{e}"
        );
        // A bad filter in a flow mapping, `kind` not first.
        let e = config_error(
            " { url: ldap://h, bind_dn: x, kind: ldap, bind_password_env: P, base_dn: dc=x, user_filter: '(cn=' }\n",
        );
        assert!(
            e.to_string().starts_with(
                "/etc/idsync/idsync.yaml:7:100: `user_filter` \"(cn=\" is not a valid LDAP filter"
            ),
            "{e}"
        );
    }

    const ENTRA: &str = "
  kind: entra
  tenant_id: contoso.onmicrosoft.com
  client_id: 11111111-2222-3333-4444-555555555555
  client_secret_env: ENTRA_SECRET
";

    #[test]
    fn entra_mistakes_are_reported_at_their_field() {
        let e = config_error(ENTRA).to_string();
        assert!(e.contains("mapping file"), "{e}");
        let e = config_error(&ENTRA.replace("  client_secret_env: ENTRA_SECRET\n", ""));
        assert!(
            e.to_string()
                .starts_with("/etc/idsync/idsync.yaml:10:14: no credential"),
            "{e}"
        );
        assert_eq!(
            e.hint().as_deref(),
            Some("see the Entra ID source section of the README")
        );
        let e = config_error(&format!("{ENTRA}  client_secret_file: /etc/s\n"));
        assert!(
            e.to_string()
                .starts_with("/etc/idsync/idsync.yaml:12:23: `client_secret_env` and `client_secret_file` are set"),
            "{e}"
        );
        let e = config_error(&format!(
            "{}  certificate_file: app.pem\n",
            ENTRA.replace("  client_secret_env: ENTRA_SECRET\n", "")
        ));
        assert!(
            e.to_string()
                .starts_with("/etc/idsync/idsync.yaml:11:21: a certificate credential needs both"),
            "{e}"
        );
        let e = config_error(&format!(
            "{}  certificate_file: app.pem\n  private_key_file: app.key\n",
            ENTRA.replace("  client_secret_env: ENTRA_SECRET\n", "")
        ));
        assert!(e.to_string().contains("mapping file"), "{e}");
        let e = config_error(&format!("{ENTRA}  full_every: daily\n"));
        assert!(
            e.to_string().starts_with(
                "/etc/idsync/idsync.yaml:12:15: full_every \"daily\" is not a duration"
            ),
            "{e}"
        );
        let e = config_error(&format!("{ENTRA}  graph_url: ftp://graph\n"));
        assert!(
            e.to_string()
                .starts_with("/etc/idsync/idsync.yaml:12:14: graph_url"),
            "{e}"
        );
        let e = config_error(&format!("{ENTRA}  rate_limit: 0\n"));
        assert!(
            e.to_string()
                .starts_with("/etc/idsync/idsync.yaml:12:15: rate_limit 0 is out of range"),
            "{e}"
        );
    }

    #[test]
    fn aliases_work_in_the_source_section() {
        let e = config_error(&format!(
            "{LDAP}  user_base_dn: &people ou=people,dc=example,dc=com\n  group_base_dn: *people\n"
        ));
        assert!(e.to_string().contains("mapping file"), "{e}");
        // The alias is reported where it is used.
        let e = config_error(&format!(
            "{LDAP}  user_base_dn: &bad '(cn='\n  group_filter: *bad\n"
        ));
        assert!(
            e.to_string()
                .starts_with("/etc/idsync/idsync.yaml:14:17: `group_filter`"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_csv_delimiter_is_reported_at_its_field() {
        let e = config_error("\n  kind: csv\n  users: users.csv\n  delimiter: \"§\"\n");
        assert!(
            e.to_string().starts_with(
                "/etc/idsync/idsync.yaml:10:14: the CSV delimiter '§' is not an ASCII"
            ),
            "{e}"
        );
        assert_eq!(
            e.hint().as_deref(),
            Some("use a single ASCII character such as ',' or ';'")
        );
    }

    #[test]
    fn source_sections_still_refuse_unknown_keys_and_kinds() {
        let e = config_error(&format!("{LDAP}  pagesize: 5\n"));
        let text = e.to_string();
        assert!(
            text.starts_with("/etc/idsync/idsync.yaml:13:3: unknown field `pagesize`"),
            "{text}"
        );
        let e = config_error("\n  kind: csv\n  users: u.csv\n  url: ldap://h\n").to_string();
        assert!(e.contains("unknown field `url`"), "{e}");
        let e = config_error("\n  kind: ldif\n  users: u.csv\n").to_string();
        assert!(e.contains("unknown variant `ldif`"), "{e}");
        let e = config_error("\n  users: u.csv\n").to_string();
        assert!(e.contains("missing field `kind`"), "{e}");
        let e = config_error("\n  kind: entra\n").to_string();
        assert!(e.contains("missing field `tenant_id`"), "{e}");
        let e = config_error("\n  kind: entra\n  tenant: x\n").to_string();
        assert!(e.contains("unknown field `tenant`"), "{e}");
    }

    /// Compiles a config whose target has `base_url: {url}` (line 4, column 13)
    /// and an LDAP source; the mapping file does not exist.
    fn with_base_url(url: &str) -> ConfigError {
        let text = ALL_BUT_SOURCE.replace("https://scim.example", url) + LDAP;
        Settings::compile(Path::new("/etc/idsync/idsync.yaml"), &text).expect_err("refused")
    }

    #[test]
    fn credentials_in_base_url_are_refused_at_the_field() {
        for url in [
            "https://user:pw-secret@scim.example/v2",
            "https://user@scim.example/v2",
            "http://:pw-secret@127.0.0.1:8080",
        ] {
            let e = with_base_url(url);
            let text = e.to_string();
            assert!(
                text.starts_with(
                    "/etc/idsync/idsync.yaml:4:13: base_url must not carry credentials"
                ),
                "{url}: {text}"
            );
            assert!(!text.contains("pw-secret"), "{text}");
            assert!(e.hint().unwrap().contains("token_env"));
        }
        let e = with_base_url("https://scim.example/v2").to_string();
        assert!(e.contains("mapping file"), "{e}");
    }

    fn target_at(url: &str) -> TargetSettings {
        TargetSettings {
            flavour: Flavour::Generic,
            base_url: url.into(),
            token: TokenSource::Env("T".into()),
            rate_limit: None,
            concurrency: 4,
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
    fn secret_message(result: Result<SecretString, ConfigError>) -> String {
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

    #[cfg(unix)]
    #[test]
    fn a_token_file_readable_by_others_or_owned_by_someone_else_is_refused() {
        let (_dir, file) = token_in_private_folder(0o640);
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

    #[test]
    fn accepts_five_field_cron() {
        assert!(parse_cron("*/40 * * * *").is_ok());
        assert!(parse_cron("0 */40 * * * *").is_ok());
        assert!(parse_cron("not cron").is_err());
    }
}
