//! The command line: argument parsing, logging set-up, and one function per
//! command wiring the pipeline together (source → mapping → planner → guards →
//! executor). Every failure ends here as an exit code from DESIGN.md, a message
//! and a `hint:` line on stderr.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use crate::apply::{Executor, Stop};
use crate::config::{ConfigError, Schedule, Settings};
use crate::model::{Desired, SourceKey, fold};
use crate::plan::{self, Plan, TargetSnapshot, guard};
use crate::quarantine;
use crate::report::{self, Format, RunSummary, Style};
use crate::scim::{ClientOptions, ScimClient, ScimError, ServiceProviderConfig};
use crate::source::{self, SourceError};
use crate::state::{RunEnd, State, StateDb, StateError, Status};

/// Exit codes (DESIGN.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    Partial = 1,
    Usage = 2,
    Guard = 3,
    Locked = 4,
    Unreachable = 5,
}

/// A command's failure: what to print and how to exit.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
    pub hint: Option<String>,
}

impl Failure {
    fn new(exit: Exit, message: impl Into<String>, hint: Option<&str>) -> Failure {
        Failure {
            exit,
            message: message.into(),
            hint: hint.map(str::to_string),
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        let hint = e.hint();
        Failure {
            exit: Exit::Usage,
            message: e.to_string(),
            hint,
        }
    }
}

impl From<StateError> for Failure {
    fn from(e: StateError) -> Self {
        match &e {
            StateError::Locked { .. } => Failure::new(
                Exit::Locked,
                e.to_string(),
                Some("wait for the other run to finish (one run at a time per state DB)"),
            ),
            _ => Failure::new(
                Exit::Usage,
                e.to_string(),
                Some(
                    "check the `state:` path and its permissions; the DB is never changed by a failed open",
                ),
            ),
        }
    }
}

impl From<SourceError> for Failure {
    fn from(e: SourceError) -> Self {
        let exit = match e {
            SourceError::Invalid { .. } => Exit::Usage,
            SourceError::Unavailable { .. } => Exit::Unreachable,
        };
        let hint = e.hint().to_string();
        Failure {
            exit,
            message: e.to_string(),
            hint: Some(hint),
        }
    }
}

fn target_failure(e: ScimError) -> Failure {
    let hint = if e.is_auth() {
        "check the SCIM token (token_env / token_file) and that it belongs to this directory"
    } else {
        "check target.base_url and that the target is reachable from here"
    };
    Failure::new(Exit::Unreachable, format!("target: {e}"), Some(hint))
}

#[derive(Debug, Parser)]
#[command(
    name = "idsync",
    version,
    about = "Keep a SCIM 2.0 directory (Atlassian Cloud first) in step with your company directory"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// The configuration file.
    #[arg(short = 'c', long = "config", env = "IDSYNC_CONFIG")]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Parse and compile the config and mapping; no network.
    Validate {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Reach the source and the target, authenticate, read target capabilities.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show what a sync would do; changes nothing.
    Plan {
        #[command(flatten)]
        config: ConfigArg,
        /// Also read the whole target: adopt, repair drift, recreate what is missing.
        #[arg(long)]
        full: bool,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Save the plan (JSON) for review and `sync --plan`.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Apply the plan to the target.
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
        /// Let removals above `max_removals` (or from an empty source) through.
        #[arg(long)]
        allow_deletes: bool,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Run cycles on the configured interval or cron schedule.
    Daemon {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Last runs, failures, pending work.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Why one user is or is not provisioned, and as what.
    Explain {
        #[command(flatten)]
        config: ConfigArg,
        /// The user's source key, userName or email.
        user: String,
    },
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { Exit::Usage as u8 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_logging(cli.log_format, cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Usage as u8);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(f) => {
            eprintln!("error: {}", f.message);
            if let Some(hint) = &f.hint {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(f.exit as u8)
        }
    }
}

fn init_logging(format: LogFormat, verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn,idsync=info",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    use std::io::IsTerminal;
    let ansi = !no_color && std::io::stderr().is_terminal();
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(ansi).init(),
    }
}

async fn run(command: Command) -> Result<Exit, Failure> {
    match command {
        Command::Validate { config } => validate(&config.config),
        Command::Check { config } => check(&Settings::load(&config.config)?).await,
        Command::Plan {
            config,
            full,
            format,
            out,
        } => {
            let settings = Settings::load(&config.config)?;
            plan_command(&settings, full, format, out.as_deref()).await
        }
        Command::Sync {
            config,
            full,
            dry_run,
            plan,
            allow_deletes,
            format,
        } => {
            let settings = Settings::load(&config.config)?;
            let opts = SyncOptions {
                full,
                dry_run,
                plan_file: plan,
                allow_deletes,
            };
            let summary = cycle(&settings, &opts, shutdown_flag()).await?;
            print_run(&summary, format);
            Ok(exit_of(&summary))
        }
        Command::Daemon { config } => daemon(&config.config).await,
        Command::Status { config, format } => status(&Settings::load(&config.config)?, format),
        Command::Explain { config, user } => explain(&Settings::load(&config.config)?, &user).await,
    }
}

fn exit_of(summary: &RunSummary) -> Exit {
    match summary.exit_code {
        0 => Exit::Ok,
        1 => Exit::Partial,
        5 => Exit::Unreachable,
        _ => Exit::Partial,
    }
}

fn print_run(summary: &RunSummary, format: Format) {
    match format {
        Format::Json => println!("{}", report::run_json(summary)),
        Format::Text => print!("{}", report::run_text(summary, Style::detect())),
    }
}

/// Set when SIGTERM or Ctrl-C arrives: the executor finishes what is in flight,
/// commits, and stops.
fn shutdown_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::warn!("stopping after the operations in flight");
        f.store(true, Ordering::SeqCst);
    });
    flag
}

fn validate(path: &Path) -> Result<Exit, Failure> {
    let settings = Settings::load(path)?;
    println!("{}: configuration is valid", path.display());
    println!("  source:  {}", describe_source(&settings));
    println!("  mapping: {}", settings.mapping_path.display());
    println!(
        "  target:  {} ({:?})",
        settings.target.base_url, settings.target.flavour
    );
    println!("  state:   {}", settings.state_path.display());
    println!(
        "  policy:  remove_action {:?}, max_removals {}, groups {}",
        settings.policy.remove_action,
        settings.policy.max_removals,
        if settings.policy.provision_groups {
            "provisioned"
        } else {
            "not provisioned"
        }
    );
    if let Err(e) = settings.target.token.read() {
        eprintln!("warning: {e}");
        if let Some(h) = e.hint() {
            eprintln!("hint: {h} (needed by check and sync, not by plan)");
        }
    }
    Ok(Exit::Ok)
}

fn describe_source(settings: &Settings) -> String {
    match &settings.source {
        crate::config::SourceSettings::Csv(c) => format!("csv {}", c.users.display()),
        crate::config::SourceSettings::Ldap(l) => format!("ldap {}", l.url()),
    }
}

fn client(settings: &Settings) -> Result<ScimClient, Failure> {
    let t = &settings.target;
    let token = t.token.read()?;
    ScimClient::new(ClientOptions {
        base_url: t.base_url.clone(),
        token,
        flavour: t.flavour,
        rate_limit: t.rate_limit,
        timeout: t.timeout,
        retry: t.retry,
        page_size: t.page_size,
        member_chunk: t.member_chunk,
    })
    .map_err(|e| {
        Failure::new(
            Exit::Usage,
            format!("target: {e}"),
            Some("check the target section of the config"),
        )
    })
}

/// Reads the target's capabilities and makes one authenticated request, so a
/// wrong token or URL stops the cycle before anything changes.
async fn preflight(client: &ScimClient) -> Result<ServiceProviderConfig, Failure> {
    let capabilities = client
        .service_provider_config()
        .await
        .map_err(target_failure)?;
    client
        .find_user_by_user_name("idsync-connectivity-check@invalid")
        .await
        .map_err(target_failure)?;
    Ok(capabilities)
}

async fn check(settings: &Settings) -> Result<Exit, Failure> {
    let started = Instant::now();
    let what = source::check(&settings.source).await?;
    println!(
        "source: ok, {what} ({:.1}s)",
        started.elapsed().as_secs_f64()
    );
    let client = client(settings)?;
    let spc = preflight(&client).await?;
    println!("target: ok, authenticated at {}", settings.target.base_url);
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    println!(
        "  capabilities: patch {}, filter {}{}, bulk {}, etag {}",
        yes_no(spc.patch),
        yes_no(spc.filter),
        spc.filter_max_results
            .map(|n| format!(" (max {n} results)"))
            .unwrap_or_default(),
        yes_no(spc.bulk),
        yes_no(spc.etag)
    );
    Ok(Exit::Ok)
}

struct SyncOptions {
    full: bool,
    dry_run: bool,
    plan_file: Option<PathBuf>,
    allow_deletes: bool,
}

/// Reads the source and maps it; record errors fail the cycle with all of them
/// listed.
async fn desired(settings: &Settings) -> Result<Desired, Failure> {
    let started = Instant::now();
    let dir = source::read(&settings.source, &settings.mapping.source_attributes()).await?;
    let read = started.elapsed();
    let users = dir.users.len();
    let desired = settings.mapping.build(dir).map_err(|errors| {
        let total = errors.len();
        let mut lines: Vec<String> = errors.iter().take(50).map(|e| format!("  {e}")).collect();
        if total > 50 {
            lines.push(format!("  … and {} more", total - 50));
        }
        Failure::new(
            Exit::Usage,
            format!(
                "{total} source record{} cannot be mapped; nothing was planned or changed:\n{}",
                if total == 1 { "" } else { "s" },
                lines.join("\n")
            ),
            Some("fix the records (or the mapping) listed above, then run again"),
        )
    })?;
    tracing::info!(
        users,
        in_scope = desired.users.len(),
        groups = desired.groups.len(),
        read_ms = read.as_millis() as u64,
        map_ms = (started.elapsed() - read).as_millis() as u64,
        "source read"
    );
    if desired.ignored_members > 0 {
        tracing::info!(
            count = desired.ignored_members,
            "group members that are not in-scope users were ignored"
        );
    }
    Ok(desired)
}

/// Reads the whole target for `--full`.
async fn read_target(client: &ScimClient) -> Result<TargetSnapshot, Failure> {
    let users = client.list_users().await.map_err(target_failure)?;
    let groups = client.list_groups().await.map_err(target_failure)?;
    tracing::info!(users = users.len(), groups = groups.len(), "target read");
    Ok(TargetSnapshot { users, groups })
}

/// Everything planning produced.
struct Planned {
    plan: Plan,
    desired: Desired,
    state: State,
    /// For `--full`: the state rebuilt from the target, to persist before applying.
    rebuilt: bool,
}

async fn make_plan(
    settings: &Settings,
    db: Option<&mut StateDb>,
    full: bool,
    client: Option<&ScimClient>,
) -> Result<Planned, Failure> {
    // The state DB is loaded on its own thread while the source is read and
    // mapped: the two are independent, and on large directories each takes
    // seconds.
    let (desired, db, loaded) = tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let loader = scope.spawn(move || {
                let mut db = db;
                let loaded = db.as_mut().map(|db| db.load());
                (db, loaded)
            });
            let desired = tokio::runtime::Handle::current().block_on(desired(settings));
            let (db, loaded) = loader.join().expect("the state loader does not panic");
            (desired, db, loaded)
        })
    });
    let desired = desired?;
    let mut state = loaded.transpose()?.unwrap_or_default();
    let mut adoptions = Vec::new();
    if full {
        let client = client.expect("a full plan has a client");
        let target = read_target(client).await?;
        if let Some(db) = &db {
            let live: Vec<SourceKey> = state
                .users
                .iter()
                .filter(|(_, u)| u.status != Status::Removed)
                .map(|(k, _)| k.clone())
                .collect();
            db.load_attrs(&mut state, live.iter())?;
        }
        let (rebuilt, adopted) = plan::reconcile(&desired, &state, &target);
        state = rebuilt;
        adoptions = adopted;
    } else if let Some(db) = &db {
        let keys: Vec<SourceKey> = plan::keys_needing_attrs(&desired, &state)
            .into_iter()
            .cloned()
            .collect();
        db.load_attrs(&mut state, keys.iter())?;
    }
    let mut plan = plan::plan(&desired, &state, &settings.policy);
    if full {
        adoptions.append(&mut plan.operations);
        plan.operations = adoptions;
        plan.summary = plan::Summary::of(&plan.operations);
        plan.full = true;
    }
    plan.fingerprint = fingerprint(settings, state.generation, full);
    if let Some(limit) = settings.target.user_limit {
        let total = state.managed_users() as u64 + plan.summary.create_users;
        if total > limit {
            plan.warnings.push(format!(
                "the target directory would hold {total} managed users, above target.user_limit {limit}"
            ));
        }
    }
    Ok(Planned {
        plan,
        desired,
        state,
        rebuilt: full,
    })
}

/// Plans without changing anything: the state DB opened read-only (none is
/// created), the target read only for `--full`. Shared by `plan` and
/// `sync --dry-run`, so a dry run is the same plan, rendered and stopped.
async fn plan_read_only(settings: &Settings, full: bool) -> Result<Planned, Failure> {
    let mut db = StateDb::open_read_only(&settings.state_path)?;
    let client = if full {
        let c = client(settings)?;
        preflight(&c).await?;
        Some(c)
    } else {
        None
    };
    make_plan(settings, db.as_mut(), full, client.as_ref()).await
}

fn fingerprint(settings: &Settings, generation: i64, full: bool) -> String {
    format!(
        "{}-{}{}",
        settings.fingerprint,
        generation,
        if full { "-full" } else { "" }
    )
}

async fn plan_command(
    settings: &Settings,
    full: bool,
    format: Format,
    out: Option<&Path>,
) -> Result<Exit, Failure> {
    let planned = plan_read_only(settings, full).await?;
    if let Err(stop) = guard::check(
        &planned.plan,
        &planned.desired,
        &planned.state,
        &settings.policy,
        false,
    ) {
        eprintln!("warning: `sync` would stop here: {stop}");
        eprintln!("hint: {}", stop.hint());
    }
    if let Some(path) = out {
        std::fs::File::create(path)
            .and_then(|file| report::write_plan_json(&planned.plan, file))
            .map_err(|e| {
                Failure::new(
                    Exit::Usage,
                    format!("cannot write {}: {e}", path.display()),
                    None,
                )
            })?;
        eprintln!(
            "plan saved to {}; apply it with `idsync sync --plan {}`",
            path.display(),
            path.display()
        );
    }
    match format {
        Format::Json => {
            report::write_plan_json(&planned.plan, std::io::stdout().lock()).map_err(|e| {
                Failure::new(
                    Exit::Usage,
                    format!("cannot write the plan to stdout: {e}"),
                    None,
                )
            })?
        }
        Format::Text => print!("{}", report::plan_text(&planned.plan, Style::detect())),
    }
    Ok(Exit::Ok)
}

/// One sync cycle: read, plan, guard, apply.
async fn cycle(
    settings: &Settings,
    opts: &SyncOptions,
    shutdown: Arc<AtomicBool>,
) -> Result<RunSummary, Failure> {
    let started = Instant::now();
    if opts.dry_run {
        let planned = plan_read_only(settings, opts.full).await?;
        guard::check(
            &planned.plan,
            &planned.desired,
            &planned.state,
            &settings.policy,
            opts.allow_deletes,
        )
        .map_err(|stop| Failure::new(Exit::Guard, stop.to_string(), Some(stop.hint())))?;
        return Ok(RunSummary {
            summary: planned.plan.summary.clone(),
            applied: 0,
            failed: 0,
            skipped: planned.plan.operations.len() as u64,
            duration_ms: started.elapsed().as_millis() as u64,
            exit_code: 0,
            failures: Vec::new(),
            warnings: planned.plan.warnings.clone(),
            stopped: None,
            dry_run: true,
            dry_run_plan: Some(planned.plan),
        });
    }

    let mut db = StateDb::open(&settings.state_path)?;
    let client = client(settings)?;
    if let Err(f) = preflight(&client).await {
        let _ = db.record_stopped_run("sync", f.exit as i32, &f.message);
        let _ = quarantine::record(&db, Some(&f.message), chrono::Utc::now());
        return Err(f);
    }

    let (plan, state, command) = match &opts.plan_file {
        Some(path) => {
            let plan = load_saved_plan(path)?;
            let state = db.load()?;
            let expected = fingerprint(settings, state.generation, false);
            if plan.full || plan.fingerprint != expected {
                return Err(Failure::new(
                    Exit::Usage,
                    format!(
                        "the saved plan {} is stale: the config, the mapping or the state changed since it was made",
                        path.display()
                    ),
                    Some(
                        "make a new plan with `idsync plan --out` and review it again (full plans cannot be saved: run `sync --full`)",
                    ),
                ));
            }
            (plan, state, "sync --plan")
        }
        None => {
            let planned = match make_plan(settings, Some(&mut db), opts.full, Some(&client)).await {
                Ok(p) => p,
                Err(f) => {
                    let _ = db.record_stopped_run("sync", f.exit as i32, &f.message);
                    return Err(f);
                }
            };
            if let Err(stop) = guard::check(
                &planned.plan,
                &planned.desired,
                &planned.state,
                &settings.policy,
                opts.allow_deletes,
            ) {
                let _ = db.record_stopped_run("sync", Exit::Guard as i32, &stop.to_string());
                print_held(&planned.plan);
                return Err(Failure::new(
                    Exit::Guard,
                    format!("{stop}; nothing was changed"),
                    Some(stop.hint()),
                ));
            }
            if planned.rebuilt {
                db.replace(&planned.state)?;
            }
            let command = if opts.full { "sync --full" } else { "sync" };
            (planned.plan, planned.state, command)
        }
    };

    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    let progress = indicatif::ProgressBar::new(plan.operations.len() as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} operations ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let executor = Executor {
        client: client.clone(),
        db: &mut db,
        state,
        create_only: settings.mapping.create_only(),
        concurrency: settings.target.concurrency,
        shutdown,
        progress,
    };
    let (outcome, run) = executor
        .run(command, &plan.operations)
        .await
        .map_err(|e| {
            Failure::new(
                Exit::Partial,
                format!("the run stopped because the state DB could not be written: {e}"),
                Some(
                    "operations committed before this are safe; free disk space or fix the DB's permissions, then run sync again (it resumes without duplicates)",
                ),
            )
        })?;

    let exit_code = match &outcome.stopped {
        Some(Stop::Unauthorized(_)) => Exit::Unreachable,
        _ if outcome.failed > 0 || outcome.stopped.is_some() => Exit::Partial,
        _ => Exit::Ok,
    } as i32;
    let summary = RunSummary {
        summary: plan.summary.clone(),
        applied: outcome.applied,
        failed: outcome.failed,
        skipped: outcome.skipped,
        duration_ms: started.elapsed().as_millis() as u64,
        exit_code,
        failures: outcome.failures,
        warnings: plan.warnings.clone(),
        stopped: outcome.stopped.as_ref().map(ToString::to_string),
        dry_run: false,
        dry_run_plan: None,
    };
    let summary_json = serde_json::to_string(&summary.summary).unwrap_or_default();
    db.finish_run(
        run,
        &RunEnd {
            applied: summary.applied as i64,
            failed: summary.failed as i64,
            exit_code,
            summary: &summary_json,
            error: summary.stopped.as_deref(),
        },
        settings.history_days,
    )?;
    let target_failure = match &outcome.stopped {
        Some(stop @ (Stop::Unauthorized(_) | Stop::FailureBudget { .. })) => Some(stop.to_string()),
        _ => None,
    };
    quarantine::record(&db, target_failure.as_deref(), chrono::Utc::now())?;
    let stats = client.stats();
    tracing::info!(
        applied = summary.applied,
        failed = summary.failed,
        requests = stats.requests,
        retries = stats.retries,
        throttled = stats.throttled,
        "cycle finished"
    );
    Ok(summary)
}

/// Lists what a guard held back, so the operator can review it.
fn print_held(plan: &Plan) {
    let held: Vec<&plan::Operation> = plan
        .operations
        .iter()
        .filter(|op| op.is_removal())
        .collect();
    eprintln!("held back {} removal(s):", held.len());
    let preview = Plan {
        operations: held.iter().take(50).map(|op| (*op).clone()).collect(),
        ..plan.clone()
    };
    for line in report::plan_text(&preview, Style { color: false })
        .lines()
        .filter(|l| l.starts_with('-'))
    {
        eprintln!("  {line}");
    }
    if held.len() > 50 {
        eprintln!("  … and {} more (see `idsync plan`)", held.len() - 50);
    }
}

fn load_saved_plan(path: &Path) -> Result<Plan, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::new(
            Exit::Usage,
            format!("cannot read {}: {e}", path.display()),
            None,
        )
    })?;
    serde_json::from_str(&text).map_err(|e| {
        Failure::new(
            Exit::Usage,
            format!("{} is not an idsync plan: {e}", path.display()),
            Some("save plans with `idsync plan --out FILE`"),
        )
    })
}

/// Runs cycles forever on the schedule. A failed cycle is logged and the next one
/// runs on time; the config is re-read each cycle so edits take effect.
async fn daemon(path: &Path) -> Result<Exit, Failure> {
    let settings = Settings::load(path)?;
    let shutdown = shutdown_flag();
    tracing::info!(schedule = ?describe_schedule(&settings.schedule), "daemon started");
    loop {
        let settings = match Settings::load(path) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "config is invalid; skipping this cycle");
                wait_for_next_cycle(&Schedule::Interval(Duration::from_secs(60)), &shutdown).await;
                if shutdown.load(Ordering::SeqCst) {
                    return Ok(Exit::Ok);
                }
                continue;
            }
        };
        if let Some(q) = held_by_quarantine(&settings) {
            tracing::warn!(
                until = ?q.until,
                failed_cycles = q.failed_cycles,
                reason = ?q.reason,
                "target quarantined after repeated failures; skipping this cycle (run `idsync sync` by hand to try now)"
            );
            wait_for_next_cycle(&settings.schedule, &shutdown).await;
            if shutdown.load(Ordering::SeqCst) {
                return Ok(Exit::Ok);
            }
            continue;
        }
        let opts = SyncOptions {
            full: false,
            dry_run: false,
            plan_file: None,
            allow_deletes: false,
        };
        match cycle(&settings, &opts, shutdown.clone()).await {
            Ok(summary) => tracing::info!(
                applied = summary.applied,
                failed = summary.failed,
                exit_code = summary.exit_code,
                "cycle done"
            ),
            Err(f) => {
                tracing::error!(exit_code = f.exit as u8, error = %f.message, hint = ?f.hint, "cycle stopped")
            }
        }
        if shutdown.load(Ordering::SeqCst) {
            return Ok(Exit::Ok);
        }
        wait_for_next_cycle(&settings.schedule, &shutdown).await;
        if shutdown.load(Ordering::SeqCst) {
            return Ok(Exit::Ok);
        }
    }
}

/// The quarantine, when it holds scheduled cycles back now.
fn held_by_quarantine(settings: &Settings) -> Option<quarantine::Quarantine> {
    let db = StateDb::open_read_only(&settings.state_path).ok()??;
    let q = quarantine::load(&db).ok()?;
    q.holds(chrono::Utc::now()).then_some(q)
}

fn describe_schedule(s: &Schedule) -> String {
    match s {
        Schedule::Interval(d) => format!("every {}", humantime::format_duration(*d)),
        Schedule::Cron(c) => format!("cron {c}"),
    }
}

/// Sleeps until the next cycle is due, waking early on shutdown.
async fn wait_for_next_cycle(schedule: &Schedule, shutdown: &AtomicBool) {
    let wait = match schedule {
        Schedule::Interval(d) => *d,
        Schedule::Cron(c) => c
            .upcoming(chrono::Utc)
            .next()
            .and_then(|t| (t - chrono::Utc::now()).to_std().ok())
            .unwrap_or(Duration::from_secs(60)),
    };
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline && !shutdown.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(1).min(deadline - Instant::now())).await;
    }
}

fn status(settings: &Settings, format: Format) -> Result<Exit, Failure> {
    let Some(mut db) = StateDb::open_read_only(&settings.state_path)? else {
        match format {
            Format::Json => println!("{{\"runs\":[],\"managed_users\":0,\"managed_groups\":0}}"),
            Format::Text => println!(
                "No runs yet: {} does not exist.",
                settings.state_path.display()
            ),
        }
        return Ok(Exit::Ok);
    };
    let state = db.load()?;
    let runs = db.recent_runs(10)?;
    let failures = db.recent_failures(20)?;
    let pending = db.interrupted_ops()?;
    let quarantine = quarantine::load(&db)?;
    let users = |s: Status| state.users.values().filter(|u| u.status == s).count();
    let groups = state
        .groups
        .values()
        .filter(|g| g.status != Status::Removed)
        .count();
    match format {
        Format::Json => {
            let value = serde_json::json!({
                "state": settings.state_path,
                "managed_users": state.managed_users(),
                "active_users": users(Status::Active),
                "disabled_users": users(Status::Disabled),
                "removed_users": users(Status::Removed),
                "managed_groups": groups,
                "runs": runs,
                "failures": failures,
                "interrupted_operations": pending.len(),
                "quarantine": quarantine,
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
        }
        Format::Text => {
            println!("State: {}", settings.state_path.display());
            println!(
                "Managed: {} users ({} active, {} disabled), {} groups; {} users removed",
                state.managed_users(),
                users(Status::Active),
                users(Status::Disabled),
                groups,
                users(Status::Removed)
            );
            if quarantine.failed_cycles > 0 {
                println!(
                    "Quarantine: {} failed cycle(s) in a row{}; last reason: {}",
                    quarantine.failed_cycles,
                    quarantine
                        .until
                        .map(|u| format!(", scheduled cycles held until {}", u.to_rfc3339()))
                        .unwrap_or_default(),
                    quarantine
                        .reason
                        .as_deref()
                        .map(report::quote)
                        .unwrap_or_default()
                );
            }
            if !pending.is_empty() {
                println!(
                    "Pending: a run was interrupted with {} operation(s) in flight; the next sync resumes safely",
                    pending.len()
                );
            }
            println!("\nRecent runs:");
            if runs.is_empty() {
                println!("  none");
            }
            for r in &runs {
                let code = r
                    .exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "running/killed".into());
                println!(
                    "  #{} {} {} exit {code}: {} planned, {} applied, {} failed{}",
                    r.id,
                    r.started_at,
                    r.command,
                    r.planned,
                    r.applied,
                    r.failed,
                    r.error
                        .as_deref()
                        .map(|e| format!(" — {}", report::quote(e)))
                        .unwrap_or_default()
                );
            }
            if !failures.is_empty() {
                println!("\nFailures of run #{}:", failures[0].run_id);
                for f in &failures {
                    let status = f
                        .http_status
                        .map(|s| format!(" HTTP {s}"))
                        .unwrap_or_default();
                    println!(
                        "  {} {}{status}: {}",
                        f.op,
                        report::quote(&f.subject),
                        f.error.as_deref().unwrap_or("")
                    );
                }
            }
        }
    }
    Ok(Exit::Ok)
}

async fn explain(settings: &Settings, who: &str) -> Result<Exit, Failure> {
    let dir = source::read(&settings.source, &settings.mapping.source_attributes()).await?;
    let wanted = fold(who);
    let record = dir.users.iter().find(|u| {
        u.key.as_str() == who
            || u.attrs
                .iter()
                .any(|(_, values)| values.iter().any(|v| fold(v) == wanted && v.contains('@')))
    });
    let mut db = StateDb::open_read_only(&settings.state_path)?;
    let state = match db.as_mut() {
        Some(db) => db.load()?,
        None => State::default(),
    };
    let Some(record) = record else {
        println!(
            "{} is not in the source ({}).",
            report::quote(who),
            describe_source(settings)
        );
        if let Some((key, u)) = state
            .users
            .iter()
            .find(|(k, u)| k.as_str() == who || fold(&u.user_name) == wanted)
        {
            println!(
                "The state DB knows it as key {} (SCIM id {}, {}); the next sync applies remove_action {:?} unless it is protected or held by a guard.",
                report::quote(key.as_str()),
                u.scim_id,
                u.status.as_str(),
                settings.policy.remove_action
            );
        }
        return Ok(Exit::Ok);
    };
    println!(
        "Source record: {} (key {})",
        record.origin,
        report::quote(record.key.as_str())
    );
    for (name, values) in record.attrs.iter() {
        println!(
            "  {name}: {}",
            values
                .iter()
                .map(|v| report::quote(v))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    match settings.mapping.map_user(record) {
        Err(e) => println!("\nMapping: cannot be mapped: {e}"),
        Ok(None) => {
            println!("\nMapping: out of scope (no include rule matches, or an exclude rule does)")
        }
        Ok(Some(user)) => {
            println!(
                "\nMapping: in scope, {}",
                if user.active {
                    "active"
                } else {
                    "inactive in the source"
                }
            );
            for (attr, value) in &user.attrs {
                println!("  {attr}: {}", report::quote(value));
            }
        }
    }
    match (state.users.get(&record.key), db.as_ref()) {
        (Some(u), Some(db)) => {
            println!(
                "\nTarget (as last pushed): SCIM id {}, {}, {} by idsync",
                u.scim_id,
                u.status.as_str(),
                match u.ownership {
                    crate::state::Ownership::Created => "created",
                    crate::state::Ownership::Adopted => "adopted",
                }
            );
            if let Some(attrs) = db.user_attrs(&record.key)? {
                for (attr, value) in &attrs {
                    println!("  {attr}: {}", report::quote(value));
                }
            }
            let history = db.history_of(record.key.as_str(), 10)?;
            if !history.is_empty() {
                println!("\nHistory:");
                for h in history {
                    let status = h
                        .http_status
                        .map(|s| format!(" HTTP {s}"))
                        .unwrap_or_default();
                    println!(
                        "  run #{} {} {}{status} {}",
                        h.run_id,
                        h.at,
                        h.op,
                        h.error.unwrap_or_default()
                    );
                }
            }
        }
        _ => println!("\nTarget: not provisioned by idsync yet."),
    }
    Ok(Exit::Ok)
}
