//! Alert emails, end to end: `idsync` sends through a real SMTP server
//! (aiosmtpd, from the test venv, run by `smtp_sink.py` beside this file on
//! 127.0.0.1) and the tests read what it received — the envelope, the
//! headers, the body. A mail server that is down, refuses the login or offers
//! no STARTTLS never changes how a cycle ends.
//!
//! aiosmtpd is installed by `scripts/test-env.sh`; without it these tests say
//! so and pass, unless `CI` is set: there they fail.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    ChildGuard, Directory, Idsync, ScimServer, Workspace, closed_port_url, fresh_token,
    manifest_dir, wait_until,
};
use crate::support::process::free_port;

/// How long the sink may take to listen, and a message to arrive.
const SINK_TIMEOUT: Duration = Duration::from_secs(20);

/// The venv's Python, beside `scim2-server`.
fn venv_python() -> PathBuf {
    match std::env::var_os("IDSYNC_SCIM2_SERVER").filter(|p| !p.is_empty()) {
        Some(server) => Path::new(&server).with_file_name("python"),
        None => manifest_dir().join(".test-env/venv/bin/python"),
    }
}

/// The venv's Python when it has aiosmtpd; `None` (the test is skipped, with
/// a message) when it has not, outside CI.
fn python_with_aiosmtpd() -> Option<PathBuf> {
    let python = venv_python();
    let found = Command::new(&python)
        .args(["-c", "import aiosmtpd"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some(python);
    }
    let why = format!(
        "aiosmtpd is not installed in {} (run scripts/test-env.sh)",
        python.display()
    );
    assert!(std::env::var_os("CI").is_none(), "{why}");
    eprintln!("skipped: {why}");
    None
}

/// One message as the sink received it.
#[derive(Debug)]
struct Mail {
    rcpt_tos: Vec<String>,
    login: Option<String>,
    from: String,
    to: String,
    subject: String,
    body: String,
}

/// aiosmtpd on a free loopback port, writing each message it accepts to a
/// folder; stopped by its PID (SIGTERM, then SIGKILL) when dropped.
struct MailSink {
    guard: ChildGuard,
    port: u16,
    dir: tempfile::TempDir,
}

impl MailSink {
    /// A sink that takes mail from anyone, or, with `login`, only from a
    /// client logged in as that user with that password.
    fn start(python: &Path, login: Option<(&str, &str)>) -> MailSink {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = manifest_dir().join("tests/e2e/smtp_sink.py");
        let mut last_log = String::new();
        // A few attempts: another process may take the port first.
        for attempt in 0..5 {
            let port = free_port();
            let log_path = dir.path().join(format!("sink-{attempt}.log"));
            let log = std::fs::File::create(&log_path).expect("sink log");
            let mut cmd = Command::new(python);
            cmd.arg(&script)
                .args(["--port", &port.to_string(), "--max-seconds", "300"])
                .arg("--out")
                .arg(dir.path().join("mail"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log fd"))
                .stderr(log);
            if let Some((user, password)) = login {
                cmd.args(["--user", user, "--password-env", "SINK_PASSWORD"])
                    .env("SINK_PASSWORD", password);
            }
            let child = cmd.spawn().expect("spawn the mail sink");
            let mut guard = ChildGuard::new(child, format!("mail sink on port {port}"));
            let listening = format!("listening on 127.0.0.1:{port}");
            let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
            let ready = wait_until(SINK_TIMEOUT, || {
                guard.try_exit_code().is_some() || read_log().contains(&listening)
            });
            if ready && guard.try_exit_code().is_none() {
                return MailSink { guard, port, dir };
            }
            last_log = read_log();
        }
        panic!("the mail sink did not start; last log:\n{last_log}");
    }

    fn port(&self) -> u16 {
        self.port
    }

    /// The messages received so far, oldest first.
    fn mails(&self) -> Vec<Mail> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("mail"))
            .map(|entries| {
                entries
                    .map(|e| e.expect("dir entry").path())
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .map(|path| {
                let v: Value =
                    serde_json::from_str(&std::fs::read_to_string(path).expect("read a mail"))
                        .expect("a mail's JSON");
                let text = |key: &str| v[key].as_str().unwrap_or_default().to_string();
                Mail {
                    rcpt_tos: v["rcpt_tos"]
                        .as_array()
                        .expect("rcpt_tos")
                        .iter()
                        .map(|r| r.as_str().unwrap().to_string())
                        .collect(),
                    login: v["login"].as_str().map(str::to_string),
                    from: text("from"),
                    to: text("to"),
                    subject: text("subject"),
                    body: text("body").replace("\r\n", "\n"),
                }
            })
            .collect()
    }

    /// Waits (bounded) until `n` messages arrived; returns them all.
    fn wait_for(&self, n: usize) -> Vec<Mail> {
        wait_until(SINK_TIMEOUT, || self.mails().len() >= n);
        let mails = self.mails();
        assert_eq!(mails.len(), n, "expected {n} messages: {mails:#?}");
        mails
    }
}

impl Drop for MailSink {
    fn drop(&mut self) {
        let pid = self.guard.id();
        if pid > 0 {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            wait_until(Duration::from_secs(5), || {
                self.guard.try_exit_code().is_some()
            });
        }
        // The guard kills it (SIGKILL, by PID) if it is still there.
    }
}

const RECIPIENTS: [&str; 2] = ["it-ops@example.com", "oncall@example.com"];

/// `notify:` sending mail to the sink at `port` (no encryption: loopback),
/// with `extra` lines under `email:`.
fn notify_email(port: u16, extra: &str) -> String {
    format!(
        "notify:\n  email:\n    smtp: 127.0.0.1:{port}\n    tls: none\n    from: \"idsync <idsync@example.com>\"\n    to: [{}]\n{extra}",
        RECIPIENTS.join(", ")
    )
}

/// A workspace synced once with six people, whose config (after the sync)
/// sends alerts to the sink at `port` and allows one removal.
fn mailing_workspace(server: &ScimServer, port: u16, extra: &str) -> (Workspace, Directory) {
    let mut ws = Workspace::new(server);
    let dir = Directory::generate(6, 2);
    ws.write_directory(&dir);
    ws.sync_ok();
    ws.max_removals = "1".into();
    ws.raw_config = Some(ws.config_text() + &notify_email(port, extra));
    (ws, dir)
}

/// `dir` less two people: more removals than the one allowed.
fn two_leavers(dir: &Directory) -> Directory {
    let mut d = dir.clone();
    d.remove_user("u0001");
    d.remove_user("u0002");
    d
}

/// Asserts what every alert holds; returns its body.
fn assert_alert(mail: &Mail, ws: &Workspace, subject: &str, exit: u8) -> String {
    let config = ws.config_path().display().to_string();
    assert_eq!(mail.rcpt_tos, RECIPIENTS, "{mail:#?}");
    assert_eq!(mail.to, RECIPIENTS.join(", "), "{mail:#?}");
    assert_eq!(mail.from, "idsync <idsync@example.com>", "{mail:#?}");
    assert_eq!(
        mail.subject,
        format!("idsync: {subject} (exit {exit}) for {config}"),
        "{mail:#?}"
    );
    let body = &mail.body;
    assert!(body.starts_with(&format!("idsync ({config}): ")), "{body}");
    assert!(body.contains(&format!("\nExit code: {exit}\n")), "{body}");
    assert!(body.contains("\nCounts: "), "{body}");
    assert!(
        body.contains(&format!("See `idsync status -c {config}`.")),
        "{body}"
    );
    assert!(!body.contains(&ws.token), "the token is in {body}");
    body.clone()
}

#[test]
fn a_guard_stop_a_source_failure_bad_data_and_the_recovery_are_mailed() {
    let Some(python) = python_with_aiosmtpd() else {
        return;
    };
    let sink = MailSink::start(&python, None);
    let server = ScimServer::start(&fresh_token("alerts-mail"));
    let (ws, dir) = mailing_workspace(&server, sink.port(), "");

    // A good cycle after a good one: nothing to say.
    ws.run(&["sync"]).assert_code(0);

    // A guard stop.
    ws.write_directory(&two_leavers(&dir));
    ws.run(&["sync"]).assert_code(3);
    let mails = sink.wait_for(1);
    let body = assert_alert(&mails[0], &ws, "guard stop", 3);
    assert!(
        body.contains("a safety guard stopped the cycle: ")
            && body.contains("nothing was changed")
            && body.contains("\nHint: "),
        "{body}"
    );
    assert!(
        body.contains(
            "\nCounts: 0 operations applied, 0 failed; idsync manages 6 users and 2 groups\n"
        ),
        "{body}"
    );
    // Counts, never the people.
    for who in ["user0001@example.com", "user0002@example.com", "u0001"] {
        assert!(!body.contains(who), "{who} in {body}");
    }

    // The source cannot be read.
    std::fs::remove_file(ws.path().join("users.csv")).unwrap();
    ws.run(&["sync"]).assert_code(5);
    let mails = sink.wait_for(2);
    let body = assert_alert(&mails[1], &ws, "source error", 5);
    assert!(
        body.contains("the source could not be read: cannot read ") && body.contains("users.csv"),
        "{body}"
    );
    assert!(
        body.contains("\nHint: check the source paths in the config"),
        "{body}"
    );

    // The source is read, but its data cannot be used.
    ws.write_file("users.csv", b"");
    ws.run(&["sync"]).assert_code(2);
    let mails = sink.wait_for(3);
    let body = assert_alert(&mails[2], &ws, "bad source data", 2);
    assert!(
        body.contains("the source's data cannot be used: ")
            && body.contains("the file is empty or has no header row"),
        "{body}"
    );
    assert!(
        body.contains("\nHint: `idsync plan` lists every problem"),
        "{body}"
    );

    // Fixed: the first good cycle says so, naming what came before.
    ws.write_directory(&dir);
    ws.run(&["sync"]).assert_code(0);
    let mails = sink.wait_for(4);
    let body = assert_alert(&mails[3], &ws, "recovered", 0);
    assert!(
        body.contains("recovered: this cycle ended well (exit 0) after 3 bad cycles since ")
            && body.contains("the last ended with exit 2."),
        "{body}"
    );
    assert!(!body.contains("\nHint: "), "{body}");

    // And the next good cycle says nothing.
    ws.run(&["sync"]).assert_code(0);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.mails().len(), 4, "{:#?}", sink.mails());
}

#[test]
fn failed_operations_are_mailed_only_when_asked_for() {
    let Some(python) = python_with_aiosmtpd() else {
        return;
    };
    let sink = MailSink::start(&python, None);
    let server = ScimServer::start(&fresh_token("alerts-failures"));
    let (ws, mut dir) = mailing_workspace(&server, sink.port(), "  on: [failures]\n");
    // Not asked for: a guard stop goes unmailed.
    ws.write_directory(&two_leavers(&dir));
    ws.run(&["sync"]).assert_code(3);
    // An update the target answers 404: one failed operation.
    let gone = server.contents().user_id("user0003@example.com");
    for group in server.groups() {
        let members = group["members"].as_array().cloned().unwrap_or_default();
        if members.iter().any(|m| m["value"] == gone.as_str()) {
            server.remove_group_member(group["id"].as_str().unwrap(), &gone);
        }
    }
    server.delete_user(&gone);
    dir.user_mut("u0003").title = "Changed".into();
    ws.write_directory(&dir);
    ws.run(&["sync"]).assert_code(1);
    let mails = sink.wait_for(1);
    let body = assert_alert(&mails[0], &ws, "failures", 1);
    assert!(
        body.contains("1 operation failed (exit 1); they are retried next cycle")
            && body.contains("\nCounts: 0 operations applied, 1 failed"),
        "{body}"
    );
    assert!(body.contains("idsync log --outcome failed"), "{body}");
}

#[test]
fn a_mail_server_that_is_down_refuses_the_login_or_offers_no_starttls_changes_no_exit_code() {
    let Some(python) = python_with_aiosmtpd() else {
        return;
    };
    const PASSWORD: &str = "sink-pw-Zq7-never-printed";
    const WRONG: &str = "wrong-pw-Zq7-never-printed";
    let sink = MailSink::start(&python, Some(("idsync", PASSWORD)));
    let dead_port = free_port();
    let server = ScimServer::start(&fresh_token("alerts-dead"));
    let mut ws = Workspace::new(&server);
    let dir = Directory::generate(6, 2);
    ws.write_directory(&dir);
    ws.sync_ok();
    ws.max_removals = "1".into();
    let base = ws.config_text();
    ws.env
        .push(("IDSYNC_TEST_SMTP_PASSWORD".into(), WRONG.into()));
    ws.extra_secrets
        .extend([WRONG.to_string(), PASSWORD.to_string()]);
    write_secret(&ws.path().join("smtp-password"), &format!("{PASSWORD}\n"));
    // Every case is a guard stop (exit 3) the mail server must not change.
    ws.write_directory(&two_leavers(&dir));
    let login_env = "    username: idsync\n    password_env: IDSYNC_TEST_SMTP_PASSWORD\n";
    let login_file = "    username: idsync\n    password_file: smtp-password\n";
    let cases = [
        (
            "nothing listens",
            notify_email(dead_port, ""),
            "notify: the email failed",
            0,
        ),
        (
            "the login is refused",
            notify_email(sink.port(), login_env),
            "535",
            0,
        ),
        (
            "no STARTTLS on offer",
            notify_email(sink.port(), login_file).replace("tls: none", "tls: starttls"),
            "notify: the email failed",
            0,
        ),
        (
            "the right password, from a file",
            notify_email(sink.port(), login_file),
            "notify: email sent",
            1,
        ),
    ];
    for (what, notify, expected, delivered) in cases {
        ws.raw_config = Some(base.clone() + &notify);
        let started = Instant::now();
        let out = ws.run(&["sync"]);
        let took = started.elapsed();
        out.assert_code(3);
        assert!(out.stderr.contains(expected), "{what}: {}", out.stderr);
        assert!(took < Duration::from_secs(60), "{what}: took {took:?}");
        let mails = sink.wait_for(delivered);
        if let Some(mail) = mails.last() {
            assert_eq!(mail.login.as_deref(), Some("idsync"), "{what}");
            assert_alert(mail, &ws, "guard stop", 3);
        }
        // Whatever the mail server did, the run is recorded as it ended.
        let status = ws
            .run(&["status", "--format", "json"])
            .assert_code(0)
            .json();
        assert_eq!(status["runs"][0]["exit_code"], 3, "{what}: {status}");
    }
    // The dead port stayed dead (nothing took it while the test ran).
    assert!(TcpStream::connect(("127.0.0.1", dead_port)).is_err());
}

/// Writes a secret file as idsync wants it: only its owner may read it.
fn write_secret(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

#[test]
fn validate_describes_the_mail_server_and_check_logs_in_to_it() {
    let Some(python) = python_with_aiosmtpd() else {
        return;
    };
    const PASSWORD: &str = "check-pw-Zq7-never-printed";
    let sink = MailSink::start(&python, Some(("idsync", PASSWORD)));
    let server = ScimServer::start(&fresh_token("alerts-check"));
    let mut ws = Workspace::new(&server);
    ws.write_directory(&Directory::generate(3, 1));
    let login = "    username: idsync\n    password_env: IDSYNC_TEST_SMTP_PASSWORD\n";
    ws.raw_config = Some(ws.config_text() + &notify_email(sink.port(), login));
    ws.extra_secrets.push(PASSWORD.into());

    // validate: where alerts go, without the password; an unset one is a warning.
    let out = ws.run(&["validate"]);
    out.assert_code(0);
    assert!(
        out.stdout.contains(&format!(
            "  notify:  email via 127.0.0.1:{} (tls: none), login idsync with the password from $IDSYNC_TEST_SMTP_PASSWORD, from idsync <idsync@example.com> to it-ops@example.com, oncall@example.com; on guard_stop, quarantine, failures, source_error, bad_data, recovered\n",
            sink.port()
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains(
            "warning: secret: the SMTP password variable IDSYNC_TEST_SMTP_PASSWORD is not set"
        ),
        "{}",
        out.stderr
    );

    // check: logs in and says so.
    ws.env
        .push(("IDSYNC_TEST_SMTP_PASSWORD".into(), PASSWORD.into()));
    let out = ws.run(&["check"]);
    out.assert_code(0);
    assert!(
        out.stdout.contains(&format!(
            "email: ok, 127.0.0.1:{} answered (tls: none, logged in)",
            sink.port()
        )),
        "{}",
        out.stdout
    );
    // A refused login is a warning; check itself still passes.
    ws.env[0].1 = "wrong".into();
    let out = ws.run(&["check"]);
    out.assert_code(0);
    assert!(
        out.stderr
            .contains("warning: notify.email: the SMTP server")
            && out.stderr.contains("535"),
        "{}",
        out.stderr
    );
    // No message was sent by either.
    assert!(sink.mails().is_empty());
}

#[test]
fn clear_text_mail_to_another_host_is_refused_by_validate() {
    let mut ws = Workspace::with_target(&closed_port_url(), &fresh_token("alerts-tls"));
    ws.raw_config = Some(
        ws.config_text()
            + "notify:\n  email:\n    smtp: smtp.example.com:25\n    tls: none\n    from: idsync@example.com\n    to: [it-ops@example.com]\n",
    );
    let out = ws.run(&["validate"]);
    out.assert_code(2);
    assert!(
        out.stderr
            .contains("notify.email.tls: none would send the alerts (and the password) to smtp.example.com in clear text"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("use `tls: starttls` (port 587) or `tls: implicit` (port 465)"),
        "{}",
        out.stderr
    );
}
