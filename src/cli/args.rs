//! The command line's definitions: every command, option and help text, and
//! the facts the manual pages add to them (exit codes, environment, files).
//!
//! This file depends on clap and std only: `build.rs` includes it to write
//! the manual pages and shell completions from these very definitions, so
//! they cannot drift from what the binary parses. Dispatch lives in the
//! parent module.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The exit codes, as the manual's EXIT STATUS section and `--help` list
/// them (a test holds them to the engine's `Exit` codes).
#[cfg_attr(not(test), allow(dead_code))] // read by build.rs and a test
pub(crate) const EXIT_CODES: &[(u8, &str)] = &[
    (
        0,
        "Success: every planned operation succeeded, or there was nothing to do.",
    ),
    (
        1,
        "Partial failure: the cycle finished but some operations failed; they are retried next cycle. `audit` and `state check` also exit 1 when they find something.",
    ),
    (
        2,
        "Usage or configuration error: nothing was read or changed.",
    ),
    (
        3,
        "A safety guard stopped the cycle (deletion limit, empty or shrunken source): nothing changed.",
    ),
    (4, "Another run holds the lock on this state DB."),
    (
        5,
        "The source or target is unreachable, or refused the credentials: nothing changed.",
    ),
    (
        6,
        "The cycle was skipped because provisioning is paused (`paused: true`); nothing was read or sent.",
    ),
    (
        7,
        "The cycle was skipped because cycles are quarantined after repeated failures (`status` says until when; `sync --force` runs one anyway).",
    ),
];

/// The manual's ENVIRONMENT section: the variables idsync reads.
#[allow(dead_code)] // read by build.rs only
pub(crate) const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "IDSYNC_CONFIG",
        "The configuration file, when -c/--config is not given.",
    ),
    (
        "RUST_LOG",
        "The log filter (e.g. debug, idsync=trace); overrides -v.",
    ),
    ("NO_COLOR", "When set and not empty, no colours on stderr."),
    (
        "CREDENTIALS_DIRECTORY",
        "Set by systemd for a unit with LoadCredential=; the packaged config reads the SCIM token from ${CREDENTIALS_DIRECTORY}/scim-token.",
    ),
    (
        "Secret variables",
        "A secret is never written in the configuration file itself: the file names a file (token_file, bind_password_file, client_secret_file, private_key_file, notify.email.password_file) or a variable to read it from (target.token_env, source.bind_password_env, source.client_secret_env, notify.email.password_env, notify.webhook_url_env). Any ${VAR} in the file is expanded from the environment before it is parsed. Secrets are never logged or printed.",
    ),
];

/// The manual's FILES section.
#[allow(dead_code)] // read by build.rs only
pub(crate) const FILES: &[(&str, &str)] = &[
    (
        "/etc/idsync/config.yaml",
        "The packaged configuration (root:idsync, mode 0640); relative paths in it resolve against its folder.",
    ),
    (
        "/etc/idsync/scim-token",
        "The target's API token (root only, mode 0600), handed to the units with LoadCredential=.",
    ),
    (
        "/usr/share/idsync/mappings/",
        "The bundled attribute mappings (csv, ldap-inetorgperson, active-directory, entra).",
    ),
    (
        "/var/lib/idsync/",
        "The state DB (the config's state:), owned by the idsync user.",
    ),
    (
        "/lib/systemd/system/idsync.service, idsync.timer",
        "One cycle about every 40 minutes; idsync@.service and idsync@.timer for several directories; idsync-daemon.service for `idsync daemon`. None is enabled on install.",
    ),
];

/// Examples shown after `--help` and as the manual's EXAMPLES section.
const TOP_EXAMPLES: &str = "\
Examples:
  idsync validate -c /etc/idsync/config.yaml
  idsync check -c /etc/idsync/config.yaml
  idsync plan -c /etc/idsync/config.yaml --format markdown
  idsync sync -c /etc/idsync/config.yaml
  idsync status -c /etc/idsync/config.yaml
  idsync version --format json";

/// `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OutputFormat {
    Text,
    Json,
}

/// `plan --format` and `revert --format`: a plan also as Markdown, for a
/// pull-request comment or a change ticket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PlanFormat {
    Text,
    Json,
    Markdown,
}

/// `audit --format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum AuditFormat {
    Text,
    Json,
    Csv,
    Html,
}

/// Keep a SCIM 2.0 directory (Atlassian Cloud first) in step with your company directory
///
/// idsync reads people and groups from a directory (LDAP or Active
/// Directory, a CSV export, Microsoft Entra ID), maps them to SCIM users and
/// groups, and creates, updates, disables and removes accounts and
/// memberships in the target so that it matches. Every cycle is planned
/// first (`plan` shows the plan and changes nothing), held back by safety
/// guards when it would remove too much, and recorded in a state DB so that a
/// run killed at any point resumes without duplicates.
///
/// Data (plans, summaries, reports) goes to stdout; logs, errors and `hint:`
/// lines go to stderr.
#[derive(Debug, Parser)]
#[command(name = "idsync", version, after_long_help = TOP_EXAMPLES)]
pub(crate) struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub(crate) log_format: LogFormat,
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// `log --outcome`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogOutcome {
    Applied,
    Failed,
    Skipped,
}

/// `log --format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormatArg {
    Text,
    Json,
    Csv,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ConfigArg {
    /// The configuration file.
    #[arg(short = 'c', long = "config", env = "IDSYNC_CONFIG")]
    pub(crate) config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Parse and compile the config and mapping; no network.
    ///
    /// Reads the configuration file and its mapping, expands ${VAR}s, and
    /// reports every mistake with its line and what to do. Reads no directory
    /// and sends nothing.
    #[command(after_long_help = "Examples:\n  idsync validate -c /etc/idsync/config.yaml")]
    Validate {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Reach the source and the target, authenticate, read target capabilities.
    ///
    /// Binds to the directory (or reads the CSV files, or gets an Entra
    /// token), reaches the target with its token and reads what it supports.
    /// Changes nothing.
    #[command(
        after_long_help = "Examples:\n  idsync check -c /etc/idsync/config.yaml\n  # as root, with the token the units load as a credential:\n  CREDENTIALS_DIRECTORY=/etc/idsync idsync check -c /etc/idsync/config.yaml"
    )]
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show what a sync would do; changes nothing.
    ///
    /// Reads the source, compares it with the state DB and prints every
    /// operation a sync would send, with the guards' verdict. Neither the
    /// target nor the state DB is changed.
    #[command(
        after_long_help = "Examples:\n  idsync plan -c /etc/idsync/config.yaml\n  idsync plan -c /etc/idsync/config.yaml --format markdown --out plan.json\n  idsync sync -c /etc/idsync/config.yaml --plan plan.json"
    )]
    Plan {
        #[command(flatten)]
        config: ConfigArg,
        /// Also read the whole target: adopt, repair drift, recreate what is missing.
        #[arg(long)]
        full: bool,
        /// How to print the plan.
        #[arg(long, value_enum, default_value = "text")]
        format: PlanFormat,
        /// Save the plan (JSON) for review and `sync --plan`.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also show the attributes each created user is created with.
        #[arg(long)]
        detail: bool,
    },
    /// Apply the plan to the target.
    ///
    /// One cycle: read the source, plan, check the guards, send the
    /// operations (rate-limited, retried), and commit each outcome to the
    /// state DB as it completes.
    #[command(
        after_long_help = "Examples:\n  idsync sync -c /etc/idsync/config.yaml\n  idsync sync -c /etc/idsync/config.yaml --dry-run\n  idsync sync -c /etc/idsync/config.yaml --only jane@example.com\n  idsync sync -c /etc/idsync/config.yaml --full"
    )]
    Sync {
        #[command(flatten)]
        config: ConfigArg,
        /// One-shot full resync: read the whole target too, adopt matching
        /// accounts, correct hand-made drift, recreate what is missing.
        #[arg(long)]
        full: bool,
        /// Plan and stop; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Apply a plan saved with `plan --out` (refused if config or state changed).
        #[arg(long, conflicts_with_all = ["full", "dry_run"])]
        plan: Option<PathBuf>,
        /// Let removals above `max_removals` or `max_member_removals` (or from an
        /// empty source) through.
        #[arg(long)]
        allow_deletes: bool,
        /// How to print the run's summary.
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
        /// Write Prometheus metrics here after the cycle (overrides `metrics_file:`).
        #[arg(long)]
        metrics_file: Option<PathBuf>,
        /// With --dry-run: also show the attributes each created user is created with.
        #[arg(long)]
        detail: bool,
        /// Provision on demand: plan and apply only this user (source key,
        /// userName or email) and their memberships; repeatable.
        #[arg(long, value_name = "KEY|EMAIL", conflicts_with_all = ["full", "plan"])]
        only: Vec<String>,
        /// Run even while cycles are quarantined after repeated failures
        /// (without it, a quarantined sync is skipped with exit 7, reading
        /// and sending nothing). Does not override `paused: true`.
        #[arg(long)]
        force: bool,
    },
    /// Run cycles on the configured interval or cron schedule.
    ///
    /// The alternative to a timer: one process that runs a cycle on the
    /// config's `schedule:` until SIGTERM, which lets the operations in
    /// flight finish and commits. Paused and quarantined cycles are skipped
    /// and logged; the daemon keeps running.
    #[command(
        after_long_help = "Examples:\n  idsync daemon -c /etc/idsync/config.yaml\n  idsync daemon -c /etc/idsync/config.yaml --metrics-listen 127.0.0.1:9184"
    )]
    Daemon {
        #[command(flatten)]
        config: ConfigArg,
        /// Write Prometheus metrics here after each cycle (overrides `metrics_file:`).
        #[arg(long)]
        metrics_file: Option<PathBuf>,
        /// Serve /metrics, /healthz and /readyz on this address, e.g.
        /// 0.0.0.0:9184 (overrides `metrics_listen:`; default: no endpoint).
        #[arg(long, value_name = "IP:PORT")]
        metrics_listen: Option<String>,
    },
    /// The provisioning log: every operation of the runs kept for `history_days`.
    #[command(
        after_long_help = "Examples:\n  idsync log -c /etc/idsync/config.yaml --since 2d --outcome failed\n  idsync log -c /etc/idsync/config.yaml --user jane@example.com --format json"
    )]
    Log {
        #[command(flatten)]
        config: ConfigArg,
        /// Only operations this recent (e.g. 2d, 12h).
        #[arg(long)]
        since: Option<String>,
        /// Only this run (the run numbers `status` shows).
        #[arg(long)]
        run: Option<i64>,
        /// Only operations on this user (source key, userName or email).
        #[arg(long)]
        user: Option<String>,
        /// Only these operations (create_user, update_user, disable_user, add_members, ...).
        #[arg(long, value_delimiter = ',')]
        action: Vec<String>,
        /// Only operations that ended so.
        #[arg(long, value_enum)]
        outcome: Option<LogOutcome>,
        /// How to print the operations.
        #[arg(long, value_enum, default_value = "text")]
        format: LogFormatArg,
    },
    /// Last runs, failures, pending work.
    #[command(
        after_long_help = "Examples:\n  idsync status -c /etc/idsync/config.yaml\n  idsync status -c /etc/idsync/config.yaml --format json"
    )]
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// How to print the status.
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
    /// Write one self-contained HTML page: runs over time, the last run's
    /// operations, quarantine and guards.
    #[command(
        after_long_help = "Examples:\n  idsync report -c /etc/idsync/config.yaml --html /var/www/idsync.html --since 7d"
    )]
    Report {
        #[command(flatten)]
        config: ConfigArg,
        /// The file to write.
        #[arg(long)]
        html: PathBuf,
        /// The period shown, back from now (e.g. 30d, 12h).
        #[arg(long, default_value = "30d")]
        since: String,
    },
    /// A plan that undoes what run RUN did (review it, then `sync --plan`).
    #[command(
        after_long_help = "Examples:\n  idsync revert -c /etc/idsync/config.yaml 42 --out undo.json\n  idsync sync -c /etc/idsync/config.yaml --plan undo.json"
    )]
    Revert {
        #[command(flatten)]
        config: ConfigArg,
        /// The run's number, as `idsync status` lists it.
        run: i64,
        /// How to print the plan.
        #[arg(long, value_enum, default_value = "text")]
        format: PlanFormat,
        /// Save the plan (JSON) for `sync --plan`.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Read the target and the source and report what the directory does not
    /// account for: orphans, stale access, group access not from the
    /// directory, drift. Writes nothing; exits 1 when anything is found.
    #[command(
        after_long_help = "Examples:\n  idsync audit -c /etc/idsync/config.yaml\n  idsync audit -c /etc/idsync/config.yaml --format html --out audit.html"
    )]
    Audit {
        #[command(flatten)]
        config: ConfigArg,
        /// How to print the findings.
        #[arg(long, value_enum, default_value = "text")]
        format: AuditFormat,
        /// Write the report to this file instead of stdout (for `--format html`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Why one user is or is not provisioned, and as what.
    #[command(
        after_long_help = "Examples:\n  idsync explain -c /etc/idsync/config.yaml jane@example.com"
    )]
    Explain {
        #[command(flatten)]
        config: ConfigArg,
        /// The user's source key, userName or email.
        user: String,
    },
    /// Look after the state DB.
    #[command(
        after_long_help = "Examples:\n  idsync state -c /etc/idsync/config.yaml check\n  idsync state -c /etc/idsync/config.yaml backup /var/backups/idsync.db"
    )]
    State {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: StateAction,
    },
    /// The version, the git commit it was built from, and what is compiled in.
    ///
    /// `--format json` prints one object (name, version, commit, features,
    /// target, rustc, sqlite) for scripts and inventories.
    #[command(after_long_help = "Examples:\n  idsync version\n  idsync version --format json")]
    Version {
        /// How to print it.
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum StateAction {
    /// Forget the notes on values the target did not keep as sent (`status`
    /// lists them). Nothing is sent: `sync --full` compares what the target
    /// holds and sends what differs.
    #[command(
        after_long_help = "Examples:\n  idsync state -c /etc/idsync/config.yaml forget-notes\n  idsync state -c /etc/idsync/config.yaml forget-notes name.familyName"
    )]
    ForgetNotes {
        /// Only the notes on this attribute (e.g. externalId, name.familyName).
        attr: Option<String>,
    },
    /// Check the state DB: SQLite's integrity and foreign-key checks and
    /// idsync's own invariants. Reads only; exit 1 names each problem.
    #[command(after_long_help = "Examples:\n  idsync state -c /etc/idsync/config.yaml check")]
    Check,
    /// Copy the state DB to FILE with SQLite's online backup: a consistent
    /// copy, also while a sync runs.
    #[command(
        after_long_help = "Examples:\n  idsync state -c /etc/idsync/config.yaml backup --force /var/backups/idsync.db"
    )]
    Backup {
        /// Where to write the copy (refused if it exists, unless --force).
        file: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
}
