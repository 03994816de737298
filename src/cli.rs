//! The command line: parses arguments, sets up logging, dispatches each command
//! to the engine (`sync`) and the renderers (`report`), and turns every failure
//! into an exit code, a message and a `hint:` line on stderr.
//!
//! Exit codes: 0 success, 1 partial failure, 2 usage or configuration error,
//! 3 a guard stopped the cycle, 4 another run holds the lock, 5 the source or
//! target is unreachable or refused the credentials, 6 the cycle was skipped
//! because provisioning is paused, 7 the cycle was skipped because cycles are
//! quarantined (`sync --force` runs it anyway).
//!
//! The definitions (commands, options, help texts) are in `args`, which the
//! build script also reads to write the manual pages and completions;
//! `version` says what was built, from the commit `commit` works out.

mod args;
// The build script's: here for its tests.
#[cfg(test)]
mod commit;
mod version;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use clap::{CommandFactory, FromArgMatches};

use crate::apply::Progress;
use crate::config::{ConfigError, Settings};
use crate::report::{self, Format, Style};
use crate::source::SourceError;
use crate::state::OpOutcome;
use crate::sync::{self, Exit, SyncError, SyncOptions, inspect};
use args::{
    AuditFormat, Cli, Command, LogFormat, LogFormatArg, LogOutcome, OutputFormat, PlanFormat,
    StateAction,
};

impl From<OutputFormat> for Format {
    fn from(f: OutputFormat) -> Format {
        match f {
            OutputFormat::Text => Format::Text,
            OutputFormat::Json => Format::Json,
        }
    }
}

/// Removals listed on stderr when a guard holds a plan back.
const HELD_LISTED: usize = 50;

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
        SyncError::Config(e).into()
    }
}

impl From<SourceError> for Failure {
    fn from(e: SourceError) -> Self {
        SyncError::Source(e).into()
    }
}

impl From<SyncError> for Failure {
    fn from(e: SyncError) -> Self {
        // What a server said (the target, an LDAP server, Graph) is one line,
        // escaped whole: it must not forge lines of output. The rest is
        // escaped line by line when printed (see `print_failure`).
        let message = match &e {
            SyncError::Target(_) | SyncError::TargetSetup(_) => report::escape(&e.to_string()),
            SyncError::Source(s) if s.is_unavailable() => report::escape(&e.to_string()),
            _ => e.to_string(),
        };
        Failure {
            exit: e.exit(),
            message,
            hint: e.hint(),
        }
    }
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match parse_args() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                Exit::Usage.code()
            } else {
                0
            };
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
            return ExitCode::from(Exit::Usage.code());
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(f) => {
            print_failure(&f);
            ExitCode::from(f.exit.code())
        }
    }
}

/// The command line, parsed by the definitions in `args` with `--version`
/// saying what was built (commit, features), which the build script that
/// shares those definitions cannot know.
fn parse_args() -> Result<Cli, clap::Error> {
    let matches = Cli::command()
        .long_version(version::long_version())
        .try_get_matches()?;
    Cli::from_arg_matches(&matches)
}

/// `error: …` and `hint: …` on stderr. A message may be several lines that
/// idsync composed (an error listing the records it refused); each line is
/// escaped, so nothing in it from outside can start a line or reach the
/// terminal raw.
fn print_failure(f: &Failure) {
    eprintln!("error: {}", report::escape_lines(&f.message));
    if let Some(hint) = &f.hint {
        eprintln!("hint: {}", report::escape_lines(hint));
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
        .with_target(false);
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    use std::io::IsTerminal;
    let ansi = !no_color && std::io::stderr().is_terminal();
    // The formatters escape every message and field themselves: no log line
    // carries a raw control character, whatever a call site passes.
    match format {
        LogFormat::Json => builder
            .json()
            .with_writer(|| report::JsonSafe::new(std::io::stderr()))
            .init(),
        LogFormat::Text => builder
            .with_writer(std::io::stderr)
            .fmt_fields(report::LogFields)
            .with_ansi(ansi)
            .init(),
    }
}

async fn run(command: Command) -> Result<Exit, Failure> {
    match command {
        Command::Validate { config } => validate(&config.config),
        Command::Check { config } => {
            let settings = Settings::load(&config.config)?;
            warn_cleartext(&settings);
            check(&settings).await
        }
        Command::Plan {
            config,
            full,
            format,
            out,
            detail,
        } => {
            let settings = Settings::load(&config.config)?;
            plan(&settings, full, format, out.as_deref(), detail).await
        }
        Command::Sync {
            config,
            full,
            dry_run,
            plan,
            allow_deletes,
            format,
            metrics_file,
            detail,
            only,
            force,
        } => {
            let mut settings = Settings::load(&config.config)?;
            if metrics_file.is_some() {
                settings.metrics_file = metrics_file;
            }
            warn_cleartext(&settings);
            let opts = SyncOptions {
                full,
                dry_run,
                plan_file: plan,
                allow_deletes,
                only,
                force,
                exits_after: true,
                ..SyncOptions::default()
            };
            sync_command(&settings, &opts, format.into(), detail).await
        }
        Command::Daemon {
            config,
            metrics_file,
            metrics_listen,
        } => {
            let metrics_listen = metrics_listen.as_deref().map(listen_arg).transpose()?;
            let options = sync::daemon::DaemonOptions {
                metrics_file,
                metrics_listen,
                render: report::metrics_text,
                render_daemon: report::daemon_metrics_text,
            };
            sync::daemon::run(&config.config, shutdown_flag(), options).await?;
            Ok(Exit::Ok)
        }
        Command::Log {
            config,
            since,
            run,
            user,
            action,
            outcome,
            format,
        } => {
            let settings = Settings::load(&config.config)?;
            let filter = log_filter(since.as_deref(), run, user, action, outcome)?;
            let records = inspect::log(&settings, &filter)?;
            match format {
                LogFormatArg::Text => print!("{}", report::log_text(&records)),
                LogFormatArg::Json => println!("{}", report::log_json(&records)),
                LogFormatArg::Csv => print!("{}", report::log_csv(&records)),
            }
            Ok(Exit::Ok)
        }
        Command::Status { config, format } => {
            let report = inspect::status(&Settings::load(&config.config)?)?;
            match Format::from(format) {
                Format::Json => println!("{}", report::status_json(&report)),
                Format::Text => print!("{}", report::status_text(&report)),
            }
            Ok(Exit::Ok)
        }
        Command::Report {
            config,
            html,
            since,
        } => {
            let since = humantime::parse_duration(&since).map_err(|e| {
                Failure::new(
                    Exit::Usage,
                    format!("--since {since}: {e}"),
                    Some("give a period such as 30d, 12h or 90min"),
                )
            })?;
            let data = inspect::report(&Settings::load(&config.config)?, since)?;
            write_page(&html, &report::report_html(&data), "report")?;
            Ok(Exit::Ok)
        }
        Command::Revert {
            config,
            run,
            format,
            out,
        } => {
            let settings = Settings::load(&config.config)?;
            let plan = sync::revert::revert(&settings, run)?;
            if let Some(path) = &out {
                save_plan(&plan, path)?;
            }
            print_plan(&plan, format, true, || report::PlanReview {
                title: format!("idsync revert of run {run}"),
                would_stop: Vec::new(),
                saved_only: true,
            })?;
            Ok(Exit::Ok)
        }
        Command::Audit {
            config,
            format,
            out,
        } => {
            let settings = Settings::load(&config.config)?;
            warn_cleartext(&settings);
            audit(&settings, format, out.as_deref()).await
        }
        Command::Explain { config, user } => {
            let explanation = inspect::explain(&Settings::load(&config.config)?, &user).await?;
            print!("{}", report::explain_text(&explanation));
            Ok(Exit::Ok)
        }
        Command::Version { format } => {
            match format {
                OutputFormat::Text => print!("{}", version::text()),
                OutputFormat::Json => println!("{}", version::json()),
            }
            Ok(Exit::Ok)
        }
        Command::State { config, action } => {
            let settings = Settings::load(&config.config)?;
            match action {
                StateAction::ForgetNotes { attr } => forget_notes(&settings, attr.as_deref()),
                StateAction::Check => state_check(&settings.state_path),
                StateAction::Backup { file, force } => {
                    state_backup(&settings.state_path, &file, force)
                }
            }
        }
    }
}

/// `audit`: the findings on stdout or in `out`; exit 1 when there are any.
async fn audit(
    settings: &Settings,
    format: AuditFormat,
    out: Option<&Path>,
) -> Result<Exit, Failure> {
    let report = sync::audit::audit(settings).await?;
    let text = match format {
        AuditFormat::Text => report::audit_text(&report),
        AuditFormat::Json => format!("{}\n", report::audit_json(&report)),
        AuditFormat::Csv => report::audit_csv(&report),
        AuditFormat::Html => report::audit_html(&report),
    };
    match out {
        None => print!("{text}"),
        Some(path) => write_page(path, &text, "audit")?,
    }
    Ok(if report.clean {
        Exit::Ok
    } else {
        Exit::Partial
    })
}

/// Writes `what` (a report, an audit) to `path`, and says so on stderr.
fn write_page(path: &Path, text: &str, what: &str) -> Result<(), Failure> {
    std::fs::write(path, text).map_err(|e| {
        Failure::new(
            Exit::Usage,
            format!("cannot write {}: {e}", path.display()),
            None,
        )
    })?;
    eprintln!(
        "{what} written to {}",
        report::escape(&path.display().to_string())
    );
    Ok(())
}

/// `state check`: the report on stdout; problems end it with exit 1.
fn state_check(path: &Path) -> Result<Exit, Failure> {
    let shown = report::escape(&path.display().to_string());
    if !path.exists() {
        return Err(Failure::new(
            Exit::Usage,
            format!("no state DB at {shown}"),
            Some("check `state:` in the config; the first sync creates the DB"),
        ));
    }
    let checked = crate::state::StateDb::check(path).map_err(SyncError::State)?;
    if checked.is_sound() {
        println!("state DB {shown}: sound");
    } else {
        println!("state DB {shown}: {} problem(s)", checked.problems.len());
        for problem in &checked.problems {
            println!("  problem: {}", report::escape(problem));
        }
    }
    for fact in &checked.facts {
        println!("  {}", report::escape(fact));
    }
    if checked.is_sound() {
        return Ok(Exit::Ok);
    }
    Err(Failure {
        exit: Exit::Partial,
        message: format!(
            "state DB {shown} is not sound: {} problem(s), listed above",
            checked.problems.len()
        ),
        hint: Some(crate::state::recovery_hint(path)),
    })
}

/// `state backup FILE [--force]`: a consistent copy through SQLite's online
/// backup, without the run lock.
fn state_backup(path: &Path, file: &Path, force: bool) -> Result<Exit, Failure> {
    let bytes = crate::state::StateDb::backup(path, file, force).map_err(SyncError::State)?;
    println!(
        "Backed up {} to {} ({bytes} bytes; SQLite quick_check of the copy: ok).",
        report::escape(&path.display().to_string()),
        report::escape(&file.display().to_string())
    );
    Ok(Exit::Ok)
}

/// `state forget-notes`: clears what earlier answers showed the target does
/// not keep, under the run lock.
fn forget_notes(settings: &Settings, attr: Option<&str>) -> Result<Exit, Failure> {
    let attr = match attr {
        None => None,
        Some(name) => Some(crate::model::UserAttr::parse(name).ok_or_else(|| {
            Failure::new(
                Exit::Usage,
                format!("unknown user attribute {}", report::quote(name)),
                Some("name a SCIM attribute as `idsync status` lists it, e.g. externalId or name.familyName"),
            )
        })?),
    };
    if !settings.state_path.exists() {
        println!(
            "No state DB at {}: no notes.",
            settings.state_path.display()
        );
        return Ok(Exit::Ok);
    }
    let db = crate::state::StateDb::open(&settings.state_path).map_err(SyncError::from)?;
    let forgotten = db.forget_notes(attr).map_err(SyncError::StateWrite)?;
    println!(
        "Forgot {forgotten} note(s){}.",
        attr.map(|a| format!(" on `{}`", a.name()))
            .unwrap_or_default()
    );
    Ok(Exit::Ok)
}

/// `--metrics-listen`: the rule `metrics_listen:` is held to, with its hint.
fn listen_arg(text: &str) -> Result<SocketAddr, Failure> {
    crate::config::parse_listen(text).map_err(|(message, hint)| {
        Failure::new(
            Exit::Usage,
            format!("--metrics-listen: {message}"),
            Some(&hint),
        )
    })
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
    let esc = |text: &dyn std::fmt::Display| report::escape(&text.to_string());
    println!("{}: configuration is valid", esc(&path.display()));
    println!("  source:  {}", esc(&settings.source.adapter().describe()));
    println!("  mapping: {}", esc(&settings.mapping_path.display()));
    println!(
        "  target:  {} ({:?})",
        esc(&settings.target.base_url),
        settings.target.flavour
    );
    println!("  state:   {}", esc(&settings.state_path.display()));
    if let Some(assign) = settings.mapping.assign() {
        println!("  assign:  {}", esc(&assign.describe()));
    }
    println!(
        "  policy:  remove_action {:?}, max_removals {}, max_member_removals {}, groups {}",
        settings.policy.remove_action,
        settings.policy.max_removals,
        settings.policy.max_member_removals,
        if settings.policy.provision_groups {
            "provisioned"
        } else {
            "not provisioned"
        }
    );
    if let Some(notify) = &settings.notify {
        println!("  notify:  {}", esc(&notify.describe()));
    }
    for line in controls_lines(&settings) {
        println!("  {line}");
    }
    warn_cleartext(&settings);
    if let Err(e) = settings.target.token.read().map_err(ConfigError::from) {
        eprintln!("warning: {}", esc(&e));
        if let Some(h) = e.hint() {
            eprintln!("hint: {} (needed by check and sync, not by plan)", esc(&h));
        }
    }
    let smtp_login = settings
        .notify
        .as_ref()
        .and_then(|n| n.email.as_ref()?.login.as_ref());
    if let Some(Err(e)) = smtp_login.map(|login| login.password.read()) {
        eprintln!("warning: {}", esc(&e));
        if let Some(h) = e.hint() {
            eprintln!("hint: {} (needed to send alert emails)", esc(&h));
        }
    }
    // What the target required when a sync last read its schema: validate
    // cannot ask it, but the mapping can be held against what it said.
    if let Ok(Some(required)) = sync::required_recorded(&settings.state_path) {
        let schema = crate::scim::TargetSchema::from_required(&required.user, &required.group);
        missing_requirements(&settings, &schema, "as its /Schemas said at the last sync")?;
    }
    Ok(Exit::Ok)
}

/// The controls set away from their defaults, one line each: switched-off
/// actions, `disabled_action`, `paused`.
fn controls_lines(settings: &Settings) -> Vec<String> {
    let policy = &settings.policy;
    let mut lines = Vec::new();
    let off = policy.actions.off();
    if !off.is_empty() {
        let names: Vec<&str> = off.iter().map(|a| a.name()).collect();
        lines.push(format!(
            "actions: off: {} (planned as skipped, never sent)",
            names.join(", ")
        ));
    }
    if policy.disabled_action == crate::plan::DisabledAction::RemoveAction {
        lines.push(format!(
            "disabled_action: remove_action (a user disabled in the source is {})",
            if policy.deletes_disabled_users() {
                "deleted, as remove_action is delete"
            } else {
                "disabled, as remove_action is disable"
            }
        ));
    }
    if settings.paused {
        lines.push(
            "paused: provisioning is paused (`paused: true`): sync and daemon cycles are skipped with exit 6, reading and sending nothing"
                .to_string(),
        );
    }
    lines
}

/// Says loudly when the token would travel in clear text (see
/// [`crate::scim::config::TargetSettings::cleartext_warning`]).
fn warn_cleartext(settings: &Settings) {
    if let Some(warning) = settings.target.cleartext_warning() {
        eprintln!("warning: {}", report::escape(&warning.to_string()));
        eprintln!(
            "hint: an http:// target is only safe on this machine (localhost, 127.0.0.1, ::1)"
        );
    }
}

async fn check(settings: &Settings) -> Result<Exit, Failure> {
    let started = Instant::now();
    let what = settings.source.adapter().check().await?;
    println!(
        "source: ok, {} ({:.1}s)",
        report::escape(&what.to_string()),
        started.elapsed().as_secs_f64()
    );
    let client = sync::client(settings)?;
    crate::apply::Target::check(&client)
        .await
        .map_err(|e| Failure::from(SyncError::Target(e)))?;
    let spc = client.capabilities();
    println!(
        "target: ok, authenticated at {}",
        report::escape(settings.target.base_url.as_str())
    );
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
    match client.page_size_in_force() {
        Some(n) => println!("  paging: {n} per list request"),
        None => println!(
            "  paging: the target's default page size (it failed a list request carrying `count`)"
        ),
    }
    if let Some(schema) = client.schema() {
        let shape = client.payload_shape();
        // A note may quote what the target answered (why /ResourceTypes could
        // not be read).
        for note in schema.notes(&settings.mapping.target_attributes(), &shape) {
            println!("  {}", report::escape(&note.to_string()));
        }
    }
    // What earlier answers showed the target keeps (read-only: check writes nothing).
    if let Ok(Some(db)) = crate::state::StateDb::open_read_only(&settings.state_path) {
        for note in db.note_summaries().unwrap_or_default() {
            println!(
                "  learned: {}; {}",
                report::escape(&note.to_string()),
                report::NOTE_EFFECT
            );
        }
    }
    if let Some(schema) = client.schema() {
        missing_requirements(settings, &schema, "required in its /Schemas")?;
    }
    check_email(settings).await;
    for line in controls_lines(settings) {
        println!("note: {line}");
    }
    Ok(Exit::Ok)
}

/// Logs in to the SMTP server alert emails go through, when one is
/// configured, and says how that went. A failure is a warning: like a failed
/// alert, it does not change the exit code.
async fn check_email(settings: &Settings) {
    let Some(email) = settings.notify.as_ref().and_then(|n| n.email.as_ref()) else {
        return;
    };
    let started = Instant::now();
    let server = report::escape(&email.server());
    match sync::email::probe(email).await {
        Ok(()) => println!(
            "email: ok, {server} answered (tls: {}{}) ({:.1}s)",
            email.tls.name(),
            if email.login.is_some() {
                ", logged in"
            } else {
                ""
            },
            started.elapsed().as_secs_f64()
        ),
        Err(why) => {
            eprintln!(
                "warning: notify.email: the SMTP server {server} failed: {}",
                report::escape(&why)
            );
            eprintln!(
                "hint: check notify.email (smtp, tls, username and the password); alert emails cannot be sent until it answers"
            );
        }
    }
}

/// Fails `check` (and `validate`, against what the last sync recorded) when
/// the target's schema requires an attribute that nothing produces: every
/// create would be refused (and is, unsent, by the client).
fn missing_requirements(
    settings: &Settings,
    schema: &crate::scim::TargetSchema,
    said: &str,
) -> Result<(), Failure> {
    let missing: Vec<_> = schema
        .requirements(&settings.mapping.target_attributes())
        .into_iter()
        .filter(|r| r.meet == crate::scim::Meet::Missing)
        .collect();
    let Some(first) = missing.first() else {
        return Ok(());
    };
    let names: Vec<String> = missing
        .iter()
        .map(|r| format!("{} {}", r.resource, r.path))
        .collect();
    let example = if first.resource == "User" {
        format!(
            "add a line under `users.attributes` in {}, e.g. `{}: <source attribute or expression>`, then `idsync validate` and `idsync check` again",
            settings.mapping_path.display(),
            first.path
        )
    } else {
        "idsync cannot send it for groups; ask the target's administrator to make it optional"
            .to_owned()
    };
    Err(Failure::new(
        Exit::Usage,
        format!(
            "the target requires {} ({said}) and the mapping does not produce {}: it would refuse every create",
            names.join(", "),
            if names.len() == 1 { "it" } else { "them" }
        ),
        Some(&example),
    ))
}

async fn plan(
    settings: &Settings,
    full: bool,
    format: PlanFormat,
    out: Option<&Path>,
    detail: bool,
) -> Result<Exit, Failure> {
    let opts = SyncOptions {
        full,
        ..SyncOptions::default()
    };
    let sync::Planned {
        mut plan,
        input,
        would_stop,
        settled_in_memory,
        ..
    } = sync::preview(settings, &opts, sync::Purpose::Review).await?;
    if settled_in_memory && let Some(path) = out {
        return Err(Failure::new(
            Exit::Usage,
            format!(
                "plan not saved to {}: a run was interrupted with changes in flight, and this plan counts them as settled, which only `idsync sync` records",
                report::escape(&path.display().to_string())
            ),
            Some(
                "run `idsync sync` once (it settles them first, then applies its plan), or review the plan with `idsync plan` without --out; save plans again after that",
            ),
        ));
    }
    if format != PlanFormat::Json {
        plan.member_names =
            crate::plan::MemberNames::of(plan.planned(), Some(input.desired()), input.state());
    }
    for stop in &would_stop {
        eprintln!(
            "warning: `sync` would {}: {}",
            if stop.exit().is_skip() {
                "skip the cycle"
            } else {
                "stop here"
            },
            report::escape(&stop.to_string())
        );
        if let Some(h) = stop.hint() {
            eprintln!("hint: {}", report::escape(&h));
        }
    }
    if let Some(path) = out {
        save_plan(&plan, path)?;
    }
    print_plan(&plan, format, detail, || report::PlanReview {
        title: if full {
            "idsync plan --full"
        } else {
            "idsync plan"
        }
        .to_owned(),
        would_stop: would_stop
            .iter()
            .map(|stop| (stop.to_string(), stop.hint()))
            .collect(),
        saved_only: false,
    })?;
    // The process ends here: freeing a million users' records one by one
    // costs a tenth of the run, and the operating system takes the memory
    // back at once.
    std::mem::forget((plan, input));
    Ok(Exit::Ok)
}

/// A plan on stdout as `format` asks; `review` is what its Markdown form
/// says beside the operations.
fn print_plan(
    plan: &crate::plan::Plan,
    format: PlanFormat,
    detail: bool,
    review: impl FnOnce() -> report::PlanReview,
) -> Result<(), Failure> {
    match format {
        PlanFormat::Json => print_plan_json(plan)?,
        PlanFormat::Text => print!("{}", report::plan_text(plan, plan_view(detail))),
        PlanFormat::Markdown => print!("{}", report::plan_markdown(plan, &review())),
    }
    Ok(())
}

/// Writes a plan for review and `sync --plan`.
fn save_plan(plan: &crate::plan::Plan, path: &Path) -> Result<(), Failure> {
    // Owner-only: the plan holds the values it will send.
    crate::state::create_private(path, true)
        .and_then(|file| report::write_plan_json(plan, file))
        .map_err(|e| {
            Failure::new(
                Exit::Usage,
                format!("cannot write {}: {e}", path.display()),
                None,
            )
        })?;
    let path = report::escape(&path.display().to_string());
    eprintln!("plan saved to {path}; apply it with `idsync sync --plan {path}`");
    Ok(())
}

fn plan_view(detail: bool) -> report::PlanView {
    report::PlanView {
        style: Style::detect(),
        detail,
    }
}

/// The plan document on stdout: `plan --format json` and `sync --dry-run
/// --format json` print the same.
fn print_plan_json(plan: &crate::plan::Plan) -> Result<(), Failure> {
    report::write_plan_json(plan, std::io::stdout().lock()).map_err(|e| {
        Failure::new(
            Exit::Usage,
            format!("cannot write the plan to stdout: {e}"),
            None,
        )
    })
}

async fn sync_command(
    settings: &Settings,
    opts: &SyncOptions,
    format: Format,
    detail: bool,
) -> Result<Exit, Failure> {
    let progress = ProgressBar::new();
    let summary = match sync::observe::observed_sync(
        settings,
        opts,
        shutdown_flag(),
        &progress,
        sync::observe::MetricsOut::file_only(report::metrics_text),
    )
    .await
    {
        Ok(summary) => summary,
        // Skipped on purpose (paused, quarantined): the one log line that
        // says so, and why, is written; nothing else is printed.
        Err(e) if e.exit().is_skip() => return Ok(e.exit()),
        Err(e) => {
            if let SyncError::Guard {
                held,
                dry_run: false,
                ..
            } = &e
            {
                eprint!("{}", report::held_text(held, HELD_LISTED));
            }
            return Err(e.into());
        }
    };
    // A dry run is the plan, rendered and stopped.
    match (format, &summary.dry_run_plan) {
        (Format::Json, Some(plan)) => print_plan_json(plan)?,
        (Format::Text, Some(_)) => print!("{}", report::dry_run_text(&summary, plan_view(detail))),
        (Format::Json, None) => println!("{}", report::run_json(&summary)),
        (Format::Text, None) => print!("{}", report::run_text(&summary, Style::detect())),
    }
    Ok(match summary.exit_code {
        exit @ (Exit::Ok | Exit::Unreachable) => exit,
        _ => Exit::Partial,
    })
}

/// `log`'s filters, checked: a duration for `--since`, known operation names.
fn log_filter(
    since: Option<&str>,
    run: Option<i64>,
    user: Option<String>,
    actions: Vec<String>,
    outcome: Option<LogOutcome>,
) -> Result<crate::state::LogFilter, Failure> {
    let since = match since {
        None => None,
        Some(text) => {
            let age = crate::yaml::parse_duration(text).map_err(|e| {
                Failure::new(
                    Exit::Usage,
                    format!("--since: {e}"),
                    Some("write it like 2d or 12h"),
                )
            })?;
            let age = chrono::Duration::from_std(age).map_err(|_| {
                Failure::new(
                    Exit::Usage,
                    format!("--since {} is too long", report::quote(text)),
                    None,
                )
            })?;
            let cutoff = chrono::Utc::now()
                .checked_sub_signed(age)
                .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
            Some(cutoff.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        }
    };
    let actions = actions
        .iter()
        .map(|a| {
            crate::model::OpKind::parse(a).ok_or_else(|| {
                Failure::new(
                    Exit::Usage,
                    format!("--action {} is not an operation", report::quote(a)),
                    Some(
                        "use create_user, update_user, enable_user, disable_user, delete_user, adopt_user, create_group, update_group, delete_group, adopt_group, add_members or remove_members",
                    ),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(crate::state::LogFilter {
        since,
        run,
        user,
        actions,
        outcome: outcome.map(|o| match o {
            LogOutcome::Applied => OpOutcome::Applied,
            LogOutcome::Failed => OpOutcome::Failed,
            LogOutcome::Skipped => OpOutcome::Skipped,
        }),
    })
}

/// A progress bar on stderr; hidden when stderr is not a terminal.
struct ProgressBar(indicatif::ProgressBar);

impl ProgressBar {
    fn new() -> Self {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} operations ({per_sec}, {eta} left)",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        ProgressBar(bar)
    }
}

impl Progress for ProgressBar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
    }
    fn advance(&self) {
        self.0.inc(1);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::TargetError;
    use crate::plan::guard::GuardStop;
    use crate::source::ldap::LdapError;
    use crate::state::StateError;
    use clap::Parser;

    fn exit_of(e: SyncError) -> Exit {
        Failure::from(e).exit
    }

    #[test]
    fn every_failure_maps_to_its_documented_exit_code() {
        let guard = SyncError::Guard {
            stop: GuardStop::EmptySource { managed: 3 },
            held: Vec::new(),
            dry_run: false,
        };
        assert_eq!(exit_of(guard), Exit::Guard);
        let refused = SyncError::Target(TargetError::Unauthorized {
            status: 401,
            detail: "no".into(),
        });
        let failure = Failure::from(refused);
        assert_eq!(failure.exit, Exit::Unreachable);
        assert!(failure.hint.unwrap().contains("token"));
        let locked = SyncError::State(StateError::Locked {
            path: "s.db.lock".into(),
        });
        assert_eq!(exit_of(locked), Exit::Locked);
        let unavailable = SyncError::Source(SourceError::from(LdapError::ConnectFailed {
            url: "ldap://127.0.0.1:9".into(),
            reason: "connection refused".into(),
        }));
        assert_eq!(exit_of(unavailable), Exit::Unreachable);
        let mapping = SyncError::Mapping {
            total: 1,
            listed: vec!["  users.csv line 2: no email".into()],
        };
        assert_eq!(exit_of(mapping), Exit::Usage);
        let stale = SyncError::StalePlan {
            path: "p.json".into(),
        };
        assert_eq!(exit_of(stale), Exit::Usage);
        let edited = SyncError::PlanMismatch {
            path: "p.json".into(),
            mismatch: crate::plan::PlanMismatch {
                index: 1,
                op: "delete_user",
                subject: "k1".into(),
                reason: crate::plan::Mismatch::NotManaged,
            },
        };
        assert_eq!(exit_of(edited), Exit::Usage);
        let disk = SyncError::StateWrite(StateError::Io {
            path: "s.db".into(),
            message: "disk full".into(),
        });
        assert_eq!(exit_of(disk), Exit::Partial);
        // A full disk, at open (nothing sent) or in the middle of a run, and a
        // damaged, incomplete or too new DB: each with its own way out.
        let full = || StateError::DiskFull {
            path: "s.db".into(),
        };
        let at_open = Failure::from(SyncError::State(full()));
        assert_eq!(at_open.exit, Exit::Usage);
        let mid_run = Failure::from(SyncError::StateWrite(full()));
        assert_eq!(mid_run.exit, Exit::Partial);
        assert!(
            mid_run.hint.unwrap().contains("free space")
                && mid_run.message.contains("no space left")
        );
        for refused in [
            StateError::Damaged {
                path: "s.db".into(),
                detail: "database disk image is malformed".into(),
            },
            StateError::WalMissing {
                path: "s.db".into(),
                frames: 3,
            },
            StateError::TooNew {
                path: "s.db".into(),
                found: 9,
                supported: 7,
            },
        ] {
            let failure = Failure::from(SyncError::State(refused));
            assert_eq!(failure.exit, Exit::Usage);
            assert!(
                failure
                    .hint
                    .as_deref()
                    .unwrap()
                    .contains("`idsync sync --full` against a fresh DB"),
                "{failure:?}"
            );
        }
        let short = SyncError::PartialListing {
            collection: "Users",
            listed: 0,
            managed: 40,
        };
        let failure = Failure::from(short);
        assert_eq!(failure.exit, Exit::Unreachable);
        assert!(failure.hint.unwrap().contains("without --full"));
    }

    #[test]
    fn a_guard_stop_says_nothing_changed_only_when_it_was_a_real_sync() {
        let stop = GuardStop::EmptySource { managed: 3 };
        let real = SyncError::Guard {
            stop: stop.clone(),
            held: Vec::new(),
            dry_run: false,
        };
        let dry = SyncError::Guard {
            stop,
            held: Vec::new(),
            dry_run: true,
        };
        assert!(real.to_string().ends_with("; nothing was changed"));
        assert!(!dry.to_string().contains("nothing was changed"));
    }

    #[test]
    fn log_filters_are_checked_and_since_becomes_a_cutoff() {
        let f = log_filter(Some("2d"), Some(3), None, vec!["create_user".into()], None).unwrap();
        let cutoff = chrono::DateTime::parse_from_rfc3339(f.since.as_deref().unwrap()).unwrap();
        let age = chrono::Utc::now() - cutoff.with_timezone(&chrono::Utc);
        assert!(
            (age - chrono::Duration::days(2)).num_seconds().abs() < 60,
            "{age}"
        );
        assert_eq!(f.run, Some(3));
        let bad_since = log_filter(Some("lately"), None, None, Vec::new(), None).unwrap_err();
        assert_eq!(bad_since.exit, Exit::Usage);
        assert!(
            bad_since.message.contains("--since"),
            "{}",
            bad_since.message
        );
        let bad_action =
            log_filter(None, None, None, vec!["create_users".into()], None).unwrap_err();
        assert_eq!(bad_action.exit, Exit::Usage);
        let f = log_filter(None, None, None, Vec::new(), Some(LogOutcome::Failed)).unwrap();
        assert_eq!(f.outcome, Some(OpOutcome::Failed));
    }

    #[test]
    fn the_command_line_parses_every_command() {
        for args in [
            &["idsync", "validate", "-c", "x.yaml"][..],
            &[
                "idsync", "plan", "-c", "x.yaml", "--full", "--format", "json",
            ],
            &[
                "idsync",
                "sync",
                "-c",
                "x.yaml",
                "--dry-run",
                "--allow-deletes",
            ],
            &["idsync", "sync", "-c", "x.yaml", "--plan", "p.json"],
            &["idsync", "status", "-c", "x.yaml", "--format", "json"],
            &["idsync", "explain", "-c", "x.yaml", "ada@example.com"],
            &["idsync", "daemon", "-c", "x.yaml"],
            &[
                "idsync",
                "daemon",
                "-c",
                "x.yaml",
                "--metrics-file",
                "m.prom",
            ],
            &[
                "idsync",
                "daemon",
                "-c",
                "x.yaml",
                "--metrics-listen",
                "[::]:9184",
            ],
            &["idsync", "sync", "-c", "x.yaml", "--metrics-file", "m.prom"],
            &[
                "idsync",
                "log",
                "-c",
                "x.yaml",
                "--since",
                "2d",
                "--run",
                "3",
                "--user",
                "ada@example.com",
                "--action",
                "create_user,update_user",
                "--outcome",
                "failed",
                "--format",
                "csv",
            ],
            &[
                "idsync", "sync", "-c", "x.yaml", "--only", "u1", "--only", "u2",
            ],
            &["idsync", "revert", "-c", "x.yaml", "3", "--out", "r.json"],
            &["idsync", "state", "-c", "x.yaml", "check"],
            &["idsync", "state", "-c", "x.yaml", "backup", "b.db"],
            &[
                "idsync", "state", "-c", "x.yaml", "backup", "--force", "b.db",
            ],
            &["idsync", "state", "-c", "x.yaml", "forget-notes", "title"],
            &[
                "idsync", "report", "-c", "x.yaml", "--html", "r.html", "--since", "7d",
            ],
            &["idsync", "plan", "-c", "x.yaml", "--format", "markdown"],
            &[
                "idsync", "revert", "-c", "x.yaml", "3", "--format", "markdown",
            ],
            &["idsync", "audit", "-c", "x.yaml"],
            &[
                "idsync", "audit", "-c", "x.yaml", "--format", "html", "--out", "a.html",
            ],
            &["idsync", "audit", "-c", "x.yaml", "--format", "csv"],
        ] {
            assert!(Cli::try_parse_from(args).is_ok(), "{args:?}");
        }
        // A saved plan is applied as it is: no --full or --dry-run with it.
        assert!(
            Cli::try_parse_from(["idsync", "sync", "-c", "x", "--plan", "p", "--full"]).is_err()
        );
    }

    #[test]
    fn manual_exit_codes_are_the_engines_exit_codes() {
        let listed: Vec<u8> = args::EXIT_CODES.iter().map(|(code, _)| *code).collect();
        let engine: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(listed, engine);
    }

    #[test]
    fn version_json_names_every_field() {
        let text = version::json().to_string();
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        for field in [
            "name", "version", "commit", "features", "target", "rustc", "sqlite",
        ] {
            assert!(parsed.get(field).is_some(), "{field} missing: {text}");
        }
        assert_eq!(parsed["name"], "idsync");
        assert_eq!(parsed["version"], env!("CARGO_PKG_VERSION"));
        assert!(!parsed["commit"].as_str().unwrap().is_empty(), "{text}");
        let features: Vec<&str> = parsed["features"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f.as_str())
            .collect();
        for wanted in ["source-csv", "source-ldap", "source-entra"] {
            assert!(features.contains(&wanted), "{features:?}");
        }
        let sqlite = format!("sqlite-{}-bundled", rusqlite::version());
        assert!(features.contains(&sqlite.as_str()), "{features:?}");
    }

    #[test]
    fn long_version_names_the_commit_and_the_features() {
        let text = version::long_version();
        assert!(text.starts_with(env!("CARGO_PKG_VERSION")), "{text}");
        assert!(
            text.contains(&format!("(commit {})", version::COMMIT)),
            "{text}"
        );
        assert!(text.contains("source-ldap"), "{text}");
        let err = Cli::command()
            .long_version(version::long_version())
            .try_get_matches_from(["idsync", "--version"])
            .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayVersion);
        assert!(err.to_string().contains(version::COMMIT), "{err}");
    }

    /// Every command, nested ones too, by its page name (`idsync-state-check`).
    fn page_names(cmd: &clap::Command, prefix: &str, names: &mut Vec<String>) {
        let name = if prefix.is_empty() {
            cmd.get_name().to_string()
        } else {
            format!("{prefix}-{}", cmd.get_name())
        };
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            if sub.get_name() != "help" {
                page_names(sub, &name, names);
            }
        }
        names.push(name);
    }

    #[test]
    fn build_script_wrote_a_manual_page_for_every_command() {
        // `<target dir>/<profile>/man`, three levels up from the build
        // script's OUT_DIR (`<profile>/build/idsync-HASH/out`).
        let profile = Path::new(env!("OUT_DIR")).ancestors().nth(3).unwrap();
        let mut names = Vec::new();
        page_names(&Cli::command(), "", &mut names);
        assert!(
            names.contains(&"idsync-state-check".to_string()),
            "{names:?}"
        );
        for name in &names {
            let page = profile.join("man").join(format!("{name}.1"));
            let text = std::fs::read_to_string(&page)
                .unwrap_or_else(|e| panic!("{}: {e}", page.display()));
            assert!(text.contains(".SH \"EXIT STATUS\""), "{}", page.display());
        }
        for file in ["idsync", "_idsync", "idsync.fish"] {
            let script = profile.join("completions").join(file);
            let text = std::fs::read_to_string(&script).unwrap();
            assert!(text.contains("forget-notes"), "{}", script.display());
        }
    }

    #[test]
    fn report_since_must_be_a_period() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let cli = Cli::try_parse_from([
            "idsync", "report", "-c", "x.yaml", "--html", "r.html", "--since", "soon",
        ])
        .unwrap();
        let failure = runtime.block_on(run(cli.command)).unwrap_err();
        assert_eq!(failure.exit, Exit::Usage);
        assert!(
            failure.message.contains("--since soon"),
            "{}",
            failure.message
        );
    }
}
