//! A throw-away working directory (`Workdir`): `config.yaml`, `state/`, and the
//! built `idsync` binary run in it with the target's token in [`TOKEN_ENV`],
//! bounded in time, and checked to print no secret.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::process::{Output, Running};
use super::scim::{PLAN_JSON, SYNC_JSON, TOKEN_ENV, assert_plan_empty};

/// How long one `idsync` run may take before it is killed, unless a
/// [`Workdir`] says otherwise.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// A temporary directory with a `state/` folder in which `idsync` runs.
pub struct Workdir {
    dir: tempfile::TempDir,
    /// The token handed to idsync through `IDSYNC_TEST_TOKEN`.
    pub token: String,
    /// Other secrets that must not be printed either (e.g. the server's real token
    /// when `token` is deliberately wrong, or a source's password).
    pub extra_secrets: Vec<String>,
    /// When set, `idsync` runs under this umask (through `sh -c 'umask …'`).
    pub umask: Option<u32>,
    /// More environment variables for `idsync` (e.g. a webhook URL).
    pub env: Vec<(String, String)>,
    /// How long one run may take before it is killed.
    pub run_timeout: Duration,
}

impl Workdir {
    /// A new directory named `PREFIX…` with an empty `state/`, whose runs get
    /// `token` as the target's token.
    pub fn new(prefix: &str, token: &str) -> Workdir {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir_all(dir.path().join("state")).expect("state dir");
        Workdir {
            dir,
            token: token.to_owned(),
            extra_secrets: Vec::new(),
            umask: None,
            env: Vec::new(),
            run_timeout: RUN_TIMEOUT,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("config.yaml")
    }

    /// The state DB (`state: state/idsync.db`).
    pub fn state_db(&self) -> PathBuf {
        self.path().join("state/idsync.db")
    }

    /// The state DB's bytes (empty when it does not exist yet).
    pub fn state_bytes(&self) -> Vec<u8> {
        std::fs::read(self.state_db()).unwrap_or_default()
    }

    pub fn write_file(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.path().join(name), bytes)
            .unwrap_or_else(|e| panic!("write {name}: {e}"));
    }

    /// Writes `config.yaml` whole (a temporary file renamed over it), and only
    /// when it changed: a daemon started earlier reads its config again every
    /// cycle, and must never see it half written by a later run.
    pub fn write_config(&self, text: &str) {
        let path = self.config_path();
        if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
            return;
        }
        let tmp = self.path().join(".config.yaml.tmp");
        std::fs::write(&tmp, text.as_bytes()).expect("write config");
        std::fs::rename(&tmp, &path).expect("rename config into place");
    }

    /// `idsync ARGS` with `-c config.yaml` right after the subcommand (which
    /// works whether it is declared on the subcommands or globally), in this
    /// directory, with the token, `env` and `more_env`.
    fn command(&self, args: &[&str], more_env: &[(&str, &str)]) -> (Command, Vec<String>) {
        let mut full: Vec<String> = Vec::new();
        if let Some((sub, rest)) = args.split_first() {
            full.push((*sub).to_owned());
            if !sub.starts_with('-') {
                full.push("-c".into());
                full.push(self.config_path().display().to_string());
            }
            full.extend(rest.iter().map(|s| (*s).to_owned()));
        }
        let mut cmd = idsync_command(self.umask);
        cmd.args(&full)
            .current_dir(self.path())
            .env(TOKEN_ENV, &self.token)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(more_env.iter().copied());
        (cmd, full)
    }

    /// Writes `config` as `config.yaml`, then starts `idsync ARGS -c config.yaml`
    /// in the background with `more_env`; none of the secrets (the token,
    /// `extra_secrets`, `more_secrets`) may appear in what it prints.
    pub fn spawn_with(
        &self,
        config: &str,
        args: &[&str],
        more_env: &[(&str, &str)],
        more_secrets: &[&str],
    ) -> Running {
        self.write_config(config);
        let (cmd, full) = self.command(args, more_env);
        let mut secrets = vec![self.token.clone()];
        secrets.extend(self.extra_secrets.iter().cloned());
        secrets.extend(more_secrets.iter().map(|s| (*s).to_owned()));
        let label = format!("idsync {}", full.join(" "));
        Running::start(cmd, label, full, secrets, None)
    }

    /// [`Workdir::spawn_with`] to the end (killed after `run_timeout`).
    pub fn run_with(
        &self,
        config: &str,
        args: &[&str],
        more_env: &[(&str, &str)],
        more_secrets: &[&str],
    ) -> Output {
        self.spawn_with(config, args, more_env, more_secrets)
            .wait(self.run_timeout)
    }

    /// Starts `idsync ARGS` on `config` in the background.
    pub fn spawn(&self, config: &str, args: &[&str]) -> Running {
        self.spawn_with(config, args, &[], &[])
    }

    /// Runs `idsync ARGS` on `config` to the end.
    pub fn run(&self, config: &str, args: &[&str]) -> Output {
        self.run_with(config, args, &[], &[])
    }
}

/// The built `idsync` (under `umask` when given, through `sh -c 'umask …'`),
/// with no colour and none of the caller's `IDSYNC_CONFIG`, `RUST_LOG` or
/// `CLICOLOR_FORCE`.
pub fn idsync_command(umask: Option<u32>) -> Command {
    let mut cmd = match umask {
        None => Command::new(env!("CARGO_BIN_EXE_idsync")),
        Some(mask) => {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg(format!("umask {mask:03o} && exec \"$0\" \"$@\""))
                .arg(env!("CARGO_BIN_EXE_idsync"));
            sh
        }
    };
    cmd.env("NO_COLOR", "1")
        .env_remove("IDSYNC_CONFIG")
        .env_remove("RUST_LOG")
        .env_remove("CLICOLOR_FORCE");
    cmd
}

/// Something that runs `idsync` on a config of its own, and the runs every
/// test makes of it.
pub trait Idsync {
    /// Runs `idsync ARGS` (with `-c config.yaml`) to the end.
    fn run(&self, args: &[&str]) -> Output;

    /// `sync --format json`, expected to exit 0; returns the run summary.
    fn sync_ok(&self) -> Value {
        self.run(SYNC_JSON).assert_code(0).json()
    }

    /// `plan --format json`, expected to exit 0; returns the plan.
    fn plan_json(&self) -> Value {
        self.run(PLAN_JSON).assert_code(0).json()
    }

    /// Asserts that `plan --format json` has no operations.
    fn assert_plan_empty(&self) {
        assert_plan_empty(&self.plan_json());
    }
}

/// The `target:` section of a config: the SCIM server at `base_url`, its token
/// in [`TOKEN_ENV`], four requests at a time, each bounded by `timeout`.
pub fn scim_target_yaml(base_url: &str, timeout: &str) -> String {
    format!(
        "target:\n\
         \x20 kind: scim\n\
         \x20 base_url: {base_url}\n\
         \x20 token_env: {TOKEN_ENV}\n\
         \x20 concurrency: 4\n\
         \x20 timeout: {timeout}\n"
    )
}
