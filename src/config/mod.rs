//! Configuration: the YAML file as written (`RawConfig`, lightly checked by serde)
//! and the compiled `Settings` every command runs on (paths resolved, mapping
//! compiled, limits parsed). Every mistake surfaces here, in `idsync validate`,
//! with the file, line and column. Each section's owner reads and compiles it —
//! the source adapters `source:`, `scim::config` `target:`, `plan::config`
//! `policy:`, the mapping `assign:` — and says where a mistake is; this module
//! places it in the file.
//! Here are only the file's shape and the order of compilation, with its parts:
//! `${VAR}` expansion (`env`), YAML errors (`located`), the `source:` section's
//! two-pass read (`kinded`), `schedule:`, `notify:` and its `email:`. Secrets
//! are located but read only when a command needs them (`TokenSource::read`,
//! `SmtpPassword::read`), so an offline `plan` needs none.

mod email;
mod env;
mod error;
mod kinded;
mod located;
mod notify;
mod schedule;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use crate::mapping::{AssignConfig, AssignRules, Mapping};
use crate::model::Domain;
use crate::plan::config::PolicyConfig;
use crate::plan::{PlanOptions, Policy};
use crate::scim::Flavour;
use crate::scim::config::{TargetConfig, TargetSettings};
use crate::source::csv::{CsvConfig, CsvSettings};
use crate::source::entra::{EntraConfig, EntraSettings};
use crate::source::ldap::{LdapConfig, LdapSettings};
use crate::source::{Source, SourceConfigError};
use crate::state::Retention;
pub use email::{EmailSettings, SmtpLogin, SmtpPassword, SmtpTls};
use env::expand_env;
pub use error::ConfigError;
use kinded::Kinded;
use located::yaml_error;
use notify::RawNotify;
pub use notify::{NotifyEvent, NotifySettings};
use schedule::RawSchedule;
pub use schedule::{Schedule, parse_cron};

// ---------------------------------------------------------------------------
// Raw configuration, as written.

/// The file as written; `S` is the `source:` section (see [`parse_raw`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig<S> {
    source: Spanned<S>,
    mapping: Option<Spanned<String>>,
    target: TargetConfig,
    #[serde(default)]
    policy: PolicyConfig,
    state: Spanned<String>,
    #[serde(default)]
    schedule: Option<Spanned<RawSchedule>>,
    #[serde(default)]
    history_days: Option<u32>,
    #[serde(default)]
    history_runs: Option<Spanned<u32>>,
    #[serde(default)]
    metrics_file: Option<Spanned<String>>,
    #[serde(default)]
    notify: Option<Spanned<RawNotify>>,
    #[serde(default)]
    paused: bool,
    assign: Option<Spanned<AssignConfig>>,
    #[serde(default)]
    metrics_listen: Option<Spanned<String>>,
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
            history_runs,
            metrics_file,
            notify,
            paused,
            assign,
            metrics_listen,
        } = self;
        RawConfig {
            source: Spanned::new(f(source.value), source.referenced, source.defined),
            mapping,
            target,
            policy,
            state,
            schedule,
            history_days,
            history_runs,
            metrics_file,
            notify,
            paused,
            assign,
            metrics_listen,
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

// ---------------------------------------------------------------------------
// Compiled settings.

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
    /// At most this many runs kept (`history_runs:`; none: only `history_days`
    /// limits the history).
    pub history_runs: Option<u32>,
    /// Prometheus text written after every cycle (`metrics_file:` or `--metrics-file`).
    pub metrics_file: Option<PathBuf>,
    pub notify: Option<NotifySettings>,
    /// `paused: true` (Entra's provisioning status Off): `sync` and daemon
    /// cycles are skipped (exit 6), reading and sending nothing; `plan`,
    /// `status` and the other commands work and say so.
    pub paused: bool,
    /// Where the daemon serves `/metrics`, `/healthz` and `/readyz`
    /// (`metrics_listen:` or `daemon --metrics-listen`; none: no endpoint). Other commands
    /// ignore it.
    pub metrics_listen: Option<SocketAddr>,
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

    /// How much run history the state DB keeps.
    pub fn retention(&self) -> Retention {
        Retention {
            days: self.history_days,
            runs: self.history_runs,
        }
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

    pub(crate) fn compile(path: &Path, text: &str) -> Result<Settings, ConfigError> {
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
        // A section's mistake is located at the offending field.
        let at = |location: &Location, message: String, hint: String| {
            ConfigError::at(&file, location, message, hint)
        };

        let refused = |e: SourceConfigError| at(&e.location, e.message, e.hint);
        let mut source = match raw.source.value {
            RawSource::Csv(csv) => SourceSettings::Csv(csv.compile(&base).map_err(refused)?),
            RawSource::Ldap(ldap) => {
                SourceSettings::Ldap(Box::new(ldap.compile(&base).map_err(refused)?))
            }
            RawSource::Entra(entra) => {
                SourceSettings::Entra(Box::new(entra.compile(&base).map_err(refused)?))
            }
        };
        let assign = match &raw.assign {
            None => None,
            Some(section) => {
                let assign = section
                    .value
                    .compile(&file, section.referenced, assign_rules(&source))
                    .map_err(|e| at(&e.location, e.message, e.hint))?;
                if let (Some(app), SourceSettings::Entra(entra)) = (assign.app(), &mut source) {
                    entra.read_app_assignments(app);
                }
                Some(assign)
            }
        };

        let target = raw
            .target
            .compile(&base)
            .map_err(|e| at(&e.location, e.message, e.hint))?;
        let (mapping_path, mapping) = match &raw.mapping {
            Some(m) => {
                let p = resolve(&m.value);
                if !p.exists() {
                    return Err(at(
                        &m.referenced,
                        format!("mapping file {} does not exist", p.display()),
                        "paths are relative to the config file's folder".into(),
                    ));
                }
                let mapping = Mapping::load(&p)?.with_assign(assign);
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

        let policy = raw
            .policy
            .compile(target_policy(&target))
            .map_err(|e| at(&e.location, e.message, e.hint))?;
        let schedule = Schedule::compile(raw.schedule.as_ref(), &file)?;
        if let Some(runs) = raw.history_runs.as_ref().filter(|r| r.value == 0) {
            return Err(at(
                &runs.referenced,
                "history_runs must be at least 1".into(),
                "it is how many runs the history keeps at most (with history_days); leave it out to keep every run of the last history_days days".into(),
            ));
        }
        let notify = match &raw.notify {
            None => None,
            Some(n) => Some(NotifySettings::compile(n, &file, &base)?),
        };
        let metrics_listen = match &raw.metrics_listen {
            None => None,
            Some(l) => Some(
                parse_listen(&l.value)
                    .map_err(|(message, hint)| at(&l.referenced, message, hint))?,
            ),
        };

        let mut hasher = blake3::Hasher::new();
        hasher.update(text.as_bytes());
        hasher.update(&[0]);
        hasher.update(&mapping_text);
        // The switches as compiled, should a `${VAR}` set them: a plan saved
        // under other switches must not pass for this config's. Left out when
        // every switch is on, so such plans keep the fingerprint they had.
        if !policy.actions.all_on() {
            hasher.update(&[0]);
            for action in policy.actions.off() {
                hasher.update(action.name().as_bytes());
                hasher.update(&[0]);
            }
        }
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
            history_runs: raw.history_runs.as_ref().map(|r| r.value),
            metrics_file: raw.metrics_file.as_ref().map(|m| resolve(&m.value)),
            notify,
            paused: raw.paused,
            metrics_listen,
        })
    }
}

/// An address for the daemon's endpoint (`metrics_listen:` or `daemon --metrics-listen`):
/// an IP address and a port, never a host name (nothing is looked up).
/// The error is the message and its hint.
pub fn parse_listen(text: &str) -> Result<SocketAddr, (String, String)> {
    text.trim().parse::<SocketAddr>().map_err(|_| {
        (
            format!("metrics_listen: {text:?} is not an IP address and port"),
            "write it like 0.0.0.0:9184 (every interface, as in a container) or 127.0.0.1:9184 (this machine only); a host name is not accepted".into(),
        )
    })
}

/// What the source decides about `assign:`: how nested groups count by
/// default (each system's own rule) and whether it reads an app's assignments.
fn assign_rules(source: &SourceSettings) -> AssignRules {
    match source {
        SourceSettings::Csv(_) => AssignRules::flattening("csv"),
        SourceSettings::Ldap(_) => AssignRules::flattening("ldap"),
        SourceSettings::Entra(_) => AssignRules::entra(),
    }
}

/// The default policy with what the target decides: the member chunk, whether
/// it renames groups, its verified domains. `policy:` applies over it.
fn target_policy(target: &TargetSettings) -> Policy {
    Policy {
        member_chunk: target.member_chunk,
        target_renames_groups: target.flavour == Flavour::Generic,
        verified_domains: target
            .verified_domains
            .iter()
            .map(|d| Domain::new(d.trim().trim_start_matches('@')))
            .collect(),
        ..Policy::default()
    }
}

/// The config file's text as the fuzz target `config` feeds it: expanded,
/// parsed and, when its mapping file is one under `sandbox` (a fuzzer would
/// find `/dev/zero`), compiled in full as if it were the file at `path`.
#[cfg(fuzzing)]
pub(crate) fn fuzz_text(sandbox: &Path, path: &Path, text: &str) {
    let file = path.display().to_string();
    let Ok(expanded) = expand_env(text, &file) else {
        return;
    };
    let Ok(raw) = parse_raw(&file, &expanded) else {
        return;
    };
    let folder = path.parent().unwrap_or(sandbox);
    let inside = raw.mapping.as_ref().is_none_or(|m| {
        std::fs::canonicalize(folder.join(&m.value)).is_ok_and(|p| p.starts_with(sandbox))
    });
    if inside {
        let _ = Settings::compile(path, text);
    }
}
