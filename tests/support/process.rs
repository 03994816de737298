//! Child processes: a guard that kills by PID on drop, a bounded run of any
//! command with its output captured (`run_bounded`, `Running`), signals, and
//! the small waits and names every test binary uses.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// The repository (`CARGO_MANIFEST_DIR`).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A token unlikely to appear anywhere by accident (so the "never printed" check
/// has no false positives).
pub fn fresh_token(tag: &str) -> String {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("tok-{tag}-{}-{n}-{nanos:09}-Zq7", std::process::id())
}

/// A free port on 127.0.0.1 (bound and released; the small race with other
/// processes is handled by the callers retrying when their server fails to bind).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Waits (bounded) until `cond` holds; false on time-out.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Signals one process by PID (bash's builtin `kill`: no procps needed).
pub fn kill(signal: &str, pid: u32) -> std::io::Result<ExitStatus> {
    Command::new("bash")
        .args(["-c", "kill -s \"$1\" \"$2\"", "kill"])
        .arg(signal)
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
}

/// Kills a child process by PID when dropped (also while unwinding from a panic).
pub struct ChildGuard {
    child: Option<Child>,
    what: String,
}

impl ChildGuard {
    pub fn new(child: Child, what: impl Into<String>) -> Self {
        Self {
            child: Some(child),
            what: what.into(),
        }
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// `Some(exit code)` once the process has exited (-1 when killed by a signal).
    pub fn try_exit_code(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.code().unwrap_or(-1)),
            Ok(None) => None,
            Err(e) => panic!("waiting for {}: {e}", self.what),
        }
    }

    fn take(&mut self) -> Option<Child> {
        self.child.take()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Child::kill sends SIGKILL to exactly this PID.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What one run printed and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub args: Vec<String>,
}

impl Output {
    /// Panics with the whole output unless the exit code is `expected`.
    pub fn assert_code(&self, expected: i32) -> &Self {
        assert_eq!(
            self.code,
            expected,
            "`idsync {}` exited {} (expected {expected})\n{}",
            self.args.join(" "),
            self.code,
            self.dump()
        );
        self
    }

    /// stdout parsed as one JSON document.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout of `idsync {}` is not JSON ({e})\n{}",
                self.args.join(" "),
                self.dump()
            )
        })
    }

    pub fn dump(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
            self.stdout, self.stderr
        )
    }
}

fn read_pipe<R: Read + Send + 'static>(mut pipe: R) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// A process started in the background with its output captured.
pub struct Running {
    guard: ChildGuard,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    /// What the panics call it: `idsync ARGS` or the whole command.
    label: String,
    args: Vec<String>,
    secrets: Vec<String>,
}

impl Running {
    /// Starts `cmd` with its output piped, `stdin` written to it (then closed).
    /// `args` is what [`Output::args`] will say; none of `secrets` may appear
    /// in what it prints.
    pub fn start(
        mut cmd: Command,
        label: String,
        args: Vec<String>,
        secrets: Vec<String>,
        stdin: Option<&str>,
    ) -> Running {
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {label}: {e}"));
        let stdout = child.stdout.take().map(read_pipe);
        let stderr = child.stderr.take().map(read_pipe);
        if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
            input.write_all(text.as_bytes()).expect("write stdin");
        }
        Running {
            guard: ChildGuard::new(child, label.clone()),
            stdout,
            stderr,
            label,
            args,
            secrets,
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.guard.try_exit_code().is_none()
    }

    /// The PID of the process.
    pub fn pid(&self) -> u32 {
        self.guard.id()
    }

    /// Sends `signal` (`KILL`, `TERM`, …) to exactly this PID.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid();
        assert!(pid > 0, "no process to signal");
        // The process may have ended on its own just before: that is fine.
        let _ = kill(signal, pid).expect("run kill");
    }

    /// Waits (bounded by `timeout`) for the process to end; kills it and panics
    /// when it does not.
    pub fn wait(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        let code = loop {
            if let Some(code) = self.guard.try_exit_code() {
                break code;
            }
            if Instant::now() >= deadline {
                if let Some(mut child) = self.guard.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                let out = self.collect(-1);
                panic!(
                    "`{}` did not finish within {timeout:?}; killed\n{}",
                    self.label,
                    out.dump()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = self.guard.take().map(|mut c| c.wait());
        self.collect(code)
    }

    fn collect(&mut self, code: i32) -> Output {
        let read = |h: Option<JoinHandle<Vec<u8>>>| {
            let bytes = h.map(|h| h.join().unwrap_or_default()).unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        };
        let out = Output {
            code,
            stdout: read(self.stdout.take()),
            stderr: read(self.stderr.take()),
            args: self.args.clone(),
        };
        assert_no_secret(&out, &self.secrets);
        out
    }
}

/// Panics if any secret appears in what a run printed.
fn assert_no_secret(out: &Output, secrets: &[String]) {
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        for (stream, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            assert!(
                !text.contains(secret.as_str()),
                "a secret (the bearer token or a password) appears in the {stream} of \
                 `idsync {}`: secrets must never be printed",
                out.args.join(" ")
            );
        }
    }
}

/// Runs `cmd` to completion with `stdin`, killing it after `limit`; its
/// [`Output::args`] is the whole command.
pub fn run_bounded(cmd: Command, limit: Duration, stdin: Option<&str>) -> Output {
    let what = format!("{cmd:?}");
    Running::start(cmd, what.clone(), vec![what], Vec::new(), stdin).wait(limit)
}
