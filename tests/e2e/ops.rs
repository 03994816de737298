//! Operating idsync: the systemd units under `examples/systemd/` checked by
//! `systemd-analyze verify`, the README's cron line parsed with idsync's own
//! cron rules, the metrics file after real cycles parsed back with a strict
//! Prometheus text-format parser, and webhook alerts received by a listener
//! on 127.0.0.1 (and a failing webhook that leaves the exit code alone);
//! alert emails are in `alerts`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::{
    Directory, Idsync, ScimServer, UserRow, Workspace, closed_port_url, fresh_token, manifest_dir,
    wait_until,
};

// ---------------------------------------------------------------------------
// systemd and cron

const UNITS: &[&str] = &[
    "idsync.service",
    "idsync.timer",
    "idsync@.service",
    "idsync@.timer",
    "idsync-daemon.service",
];

fn unit_text(name: &str) -> String {
    let path = manifest_dir().join("examples/systemd").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `systemd-analyze verify` on every unit (the templates as an instance), with
/// the ExecStart binary pointed at the built idsync so the path exists. Works
/// without systemd as PID 1; a warning about a unit (an unknown key, a bad
/// value) fails the test, not only an error.
#[test]
fn every_systemd_unit_passes_systemd_analyze_verify() {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "systemd-analyze is not installed: install Debian's `systemd` package (bash scripts/test-env.sh does)"
            )
        });
    let dir = tempfile::tempdir().unwrap();
    let binary = env!("CARGO_BIN_EXE_idsync");
    let mut files = Vec::new();
    for name in UNITS {
        let text = unit_text(name).replace("/usr/bin/idsync", binary);
        // A template is verified as an instance of it.
        let name = name.replace("@.", "@corp.");
        std::fs::write(dir.path().join(&name), text).unwrap();
        files.push(dir.path().join(&name));
    }
    let out = Command::new(&analyze)
        .arg("verify")
        .arg("--man=no")
        .args(&files)
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path().display()))
        .env("SYSTEMD_LOG_COLOR", "0")
        .env("SYSTEMD_PAGER", "")
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stdout}{stderr}"
    );
    let about_units: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| l.contains("idsync"))
        .collect();
    assert!(
        about_units.is_empty(),
        "systemd-analyze warned about the units:\n{}",
        about_units.join("\n")
    );
}

/// The verify test must fail on a broken unit: a misspelt key is only a
/// warning to systemd, and the test above reads warnings.
#[test]
fn systemd_analyze_reports_a_misspelt_key_as_a_warning_the_test_reads() {
    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        panic!(
            "systemd-analyze is not installed: install Debian's `systemd` package (bash scripts/test-env.sh does)"
        );
    };
    let dir = tempfile::tempdir().unwrap();
    let text = unit_text("idsync.service")
        .replace("/usr/bin/idsync", env!("CARGO_BIN_EXE_idsync"))
        .replace("TimeoutStartSec=", "TimeoutStartSecs=");
    let file = dir.path().join("idsync.service");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&file)
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path().display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("idsync.service") && stderr.contains("TimeoutStartSecs"),
        "{stderr}"
    );
}

/// What the issue asks of each unit, beyond what systemd checks.
#[test]
fn the_units_bound_a_cycle_harden_the_service_and_pass_the_token_as_a_credential() {
    for name in ["idsync.service", "idsync@.service"] {
        let text = unit_text(name);
        for needed in [
            "Type=oneshot",
            "TimeoutStartSec=",
            "User=idsync",
            "StateDirectory=idsync",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "PrivateTmp=yes",
            "LoadCredential=scim-token:",
        ] {
            assert!(text.contains(needed), "{name} lacks {needed}");
        }
        assert!(!text.contains("Environment=IDSYNC_TOKEN"), "{name}");
    }
    for name in ["idsync.timer", "idsync@.timer"] {
        let text = unit_text(name);
        for needed in [
            "OnBootSec=",
            "OnUnitInactiveSec=40min",
            "RandomizedDelaySec=",
        ] {
            assert!(text.contains(needed), "{name} lacks {needed}");
        }
        let directives: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(
            !directives.iter().any(|l| l.starts_with("OnCalendar=")),
            "{name}"
        );
    }
    let daemon = unit_text("idsync-daemon.service");
    for needed in [
        "Type=simple",
        "Restart=on-failure",
        "idsync daemon -c",
        "LoadCredential=",
    ] {
        assert!(
            daemon.contains(needed),
            "idsync-daemon.service lacks {needed}"
        );
    }
}

/// The crontab line the README shows, between its markers.
fn readme_cron_line() -> String {
    let readme = std::fs::read_to_string(manifest_dir().join("README.md")).unwrap();
    let block = readme
        .split("<!-- cron-line -->")
        .nth(1)
        .expect("README has a <!-- cron-line --> block");
    block
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("```"))
        .expect("a cron line in the block")
        .to_string()
}

#[test]
fn the_readme_cron_line_parses_with_the_five_field_rules_idsync_uses() {
    let line = readme_cron_line();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert!(fields.len() > 6, "{line}");
    let schedule = idsync::config::parse_cron(&fields[..5].join(" "))
        .unwrap_or_else(|e| panic!("{line}: {e}"));
    // /etc/cron.d: the 6th field is the user, then the command.
    assert_eq!(fields[5], "idsync", "{line}");
    assert!(
        fields[6].ends_with("/idsync") && fields[7] == "sync",
        "{line}"
    );
    assert!(line.contains(" -c /etc/idsync/config.yaml"), "{line}");
    // Every 40 minutes as cron can say it: at :00 and :40 of every hour.
    let minutes: std::collections::BTreeSet<u32> = schedule
        .upcoming(chrono::Utc)
        .take(12)
        .map(|t| chrono::Timelike::minute(&t))
        .collect();
    assert_eq!(minutes.into_iter().collect::<Vec<_>>(), [0, 40], "{line}");
}

// ---------------------------------------------------------------------------
// A strict Prometheus text-format (0.0.4) parser

#[derive(Debug, Default)]
struct Exposition {
    /// Family name → type.
    types: BTreeMap<String, String>,
    /// `name{labels}` (labels sorted, as written) → value.
    samples: BTreeMap<String, f64>,
}

impl Exposition {
    fn get(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no sample {series} in {:#?}", self.samples))
    }

    /// The sum of a family's samples whose labels contain `having`.
    fn sum(&self, name: &str, having: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(s, _)| {
                s.strip_prefix(name)
                    .is_some_and(|l| l.is_empty() || l.starts_with('{'))
                    && s.contains(having)
            })
            .map(|(_, v)| v)
            .sum()
    }
}

/// Parses the text format strictly: `# HELP` and `# TYPE` before a family's
/// samples, a known type, metric and label names of the allowed characters,
/// quoted and escaped label values, a float value and no timestamp, no
/// duplicate series, a final newline.
fn parse_exposition(text: &str) -> Exposition {
    assert!(text.ends_with('\n'), "no final newline");
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut e = Exposition::default();
    let mut helped = std::collections::BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = format!("line {}: {line:?}", n + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or_else(|| panic!("{at}"));
            assert!(name_ok(name) && !help.is_empty(), "{at}");
            assert!(helped.insert(name.to_string()), "HELP twice: {at}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("{at}"));
            assert!(name_ok(name), "{at}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{at}"
            );
            assert!(
                e.types.insert(name.into(), kind.into()).is_none(),
                "TYPE twice: {at}"
            );
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "{at}");
        let (series, value) = match line.find('{') {
            Some(open) => {
                let close = line.rfind('}').unwrap_or_else(|| panic!("{at}"));
                let name = &line[..open];
                assert!(name_ok(name), "{at}");
                let mut labels = &line[open + 1..close];
                while !labels.is_empty() {
                    let (key, rest) = labels.split_once("=\"").unwrap_or_else(|| panic!("{at}"));
                    assert!(name_ok(key), "label name: {at}");
                    let mut chars = rest.char_indices();
                    let end = loop {
                        match chars.next() {
                            Some((_, '\\')) => {
                                let (_, c) = chars.next().unwrap_or_else(|| panic!("{at}"));
                                assert!(matches!(c, '\\' | '"' | 'n'), "escape: {at}");
                            }
                            Some((i, '"')) => break i,
                            Some((_, '\n')) | None => panic!("unterminated label value: {at}"),
                            Some(_) => {}
                        }
                    };
                    labels = &rest[end + 1..];
                    labels = labels.strip_prefix(',').unwrap_or(labels);
                }
                let rest = &line[close + 1..];
                let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("{at}"));
                (line[..=close].to_string(), value)
            }
            None => {
                let (name, value) = line.split_once(' ').unwrap_or_else(|| panic!("{at}"));
                assert!(name_ok(name), "{at}");
                (name.to_string(), value)
            }
        };
        // One field: a value, no timestamp.
        assert!(!value.contains(' '), "a timestamp or extra field: {at}");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("value: {at}")),
        };
        let family = series.split('{').next().unwrap().to_string();
        assert!(
            e.types.contains_key(&family) && helped.contains(&family),
            "sample before its HELP and TYPE: {at}"
        );
        assert!(
            e.samples.insert(series, value).is_none(),
            "duplicate series: {at}"
        );
    }
    e
}

#[test]
fn the_strict_parser_refuses_timestamps_missing_types_and_bad_labels() {
    let ok = "# HELP a x\n# TYPE a gauge\na{k=\"v\\\"\"} 1\n";
    assert_eq!(parse_exposition(ok).get("a{k=\"v\\\"\"}"), 1.0);
    for bad in [
        "# HELP a x\n# TYPE a gauge\na 1 1700000000000\n",
        "a 1\n",
        "# HELP a x\n# TYPE a gauge\na{k=v} 1\n",
        "# HELP a x\n# TYPE a gauge\na 1",
        "# HELP a x\n# TYPE a gauge\na 1\na 2\n",
    ] {
        assert!(
            std::panic::catch_unwind(|| parse_exposition(bad)).is_err(),
            "accepted {bad:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Metrics after real cycles

fn three_people() -> Directory {
    let users = vec![
        UserRow::new("u1", "ada@example.com", "Ada", "Lovelace"),
        UserRow::new("u2", "grace@example.com", "Grace", "Hopper"),
        UserRow::new("u3", "alan@example.com", "Alan", "Turing"),
    ];
    let mut groups = BTreeMap::new();
    groups.insert(
        "engineering".to_string(),
        vec!["u1".to_string(), "u2".to_string(), "u3".to_string()],
    );
    Directory { users, groups }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn the_metrics_file_after_a_sync_and_a_guard_stop_parses_and_matches_the_runs() {
    let server = ScimServer::start(&fresh_token("ops-metrics"));
    let mut ws = Workspace::new(&server);
    std::fs::create_dir_all(ws.path().join("metrics")).unwrap();
    let metrics = ws.path().join("metrics/idsync.prom");
    ws.raw_config = Some(ws.config_text() + "metrics_file: metrics/idsync.prom\n");
    let dir = three_people();
    ws.write_directory(&dir);

    let before = unix_now();
    let run = ws.sync_ok();
    let after = unix_now();
    let text = std::fs::read_to_string(&metrics).expect("metrics written");
    let m = parse_exposition(&text);
    assert_eq!(m.get("idsync_last_exit_code"), 0.0);
    let last_run = m.get("idsync_last_run_timestamp_seconds");
    assert!(
        before - 1.0 <= last_run && last_run <= after + 1.0,
        "{last_run}"
    );
    let last_success = m.get("idsync_last_success_timestamp_seconds");
    assert!((last_success - last_run).abs() < 2.0, "{text}");
    assert!(m.get("idsync_cycle_duration_seconds") <= after - before + 1.0);
    assert_eq!(
        m.get("idsync_operations_total{action=\"create_user\",outcome=\"applied\"}"),
        run["summary"]["create_users"].as_f64().unwrap()
    );
    assert_eq!(
        m.sum("idsync_operations_total", "outcome=\"applied\""),
        run["applied"].as_f64().unwrap()
    );
    assert_eq!(m.sum("idsync_operations_total", "outcome=\"failed\""), 0.0);
    assert_eq!(
        m.get("idsync_objects{kind=\"user\",status=\"active\"}"),
        3.0
    );
    assert_eq!(
        m.get("idsync_objects{kind=\"group\",status=\"active\"}"),
        1.0
    );
    assert_eq!(m.get("idsync_source_objects{kind=\"user\"}"), 3.0);
    assert_eq!(m.get("idsync_source_objects{kind=\"group\"}"), 1.0);
    let requests = m.sum("idsync_http_requests_total", "");
    assert!(requests >= run["applied"].as_f64().unwrap(), "{text}");
    assert_eq!(
        m.get("idsync_http_requests_total{code=\"201\"}"),
        4.0,
        "{text}"
    );
    assert_eq!(m.get("idsync_throttled_total"), 0.0);
    assert_eq!(m.get("idsync_quarantined"), 0.0);
    assert_eq!(m.types["idsync_operations_total"], "counter");
    assert_eq!(m.types["idsync_objects"], "gauge");
    // No user or group names in the file.
    for name in ["ada", "grace", "alan", "example.com", "engineering", "u1"] {
        assert!(!text.contains(name), "{name} in:\n{text}");
    }
    // No temporary file is left beside it.
    let files: Vec<_> = std::fs::read_dir(ws.path().join("metrics"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files, ["idsync.prom"]);

    // A guard stop: the exit code changes, the last success stays, the
    // counters keep their totals.
    std::thread::sleep(Duration::from_millis(1100));
    ws.raw_config = Some(
        ws.raw_config
            .clone()
            .unwrap()
            .replace("max_removals: 100%", "max_removals: 1"),
    );
    let mut leavers = dir.clone();
    leavers.remove_user("u2");
    leavers.remove_user("u3");
    ws.write_directory(&leavers);
    ws.run(&["sync"]).assert_code(3);
    let text2 = std::fs::read_to_string(&metrics).unwrap();
    let m2 = parse_exposition(&text2);
    assert_eq!(m2.get("idsync_last_exit_code"), 3.0);
    assert_eq!(
        m2.get("idsync_last_success_timestamp_seconds"),
        last_success
    );
    assert!(m2.get("idsync_last_run_timestamp_seconds") > last_run);
    assert_eq!(
        m2.sum("idsync_operations_total", ""),
        m.sum("idsync_operations_total", "")
    );
    assert_eq!(
        m2.get("idsync_objects{kind=\"user\",status=\"active\"}"),
        3.0
    );
    // The guard stop's own requests (the connectivity check) are added.
    assert!(m2.sum("idsync_http_requests_total", "") > requests);
}

#[test]
fn sync_metrics_file_flag_overrides_the_config_and_a_dry_run_writes_none() {
    let server = ScimServer::start(&fresh_token("ops-metrics-flag"));
    let ws = Workspace::new(&server);
    ws.write_directory(&three_people());
    let path = ws.path().join("flag.prom");
    ws.run(&[
        "sync",
        "--dry-run",
        "--metrics-file",
        path.to_str().unwrap(),
    ])
    .assert_code(0);
    assert!(!path.exists(), "a dry run wrote metrics");
    ws.run(&["sync", "--metrics-file", path.to_str().unwrap()])
        .assert_code(0);
    let m = parse_exposition(&std::fs::read_to_string(&path).unwrap());
    assert_eq!(m.get("idsync_last_exit_code"), 0.0);
}

// ---------------------------------------------------------------------------
// Webhook alerts

/// How the test's webhook answers.
#[derive(Clone, Copy)]
enum Answer {
    Status(u16),
    /// Accepts the connection, reads the request, never answers.
    Never,
}

/// A webhook on 127.0.0.1 that records the bodies posted to it; stopped (and
/// its thread joined) when dropped; it never runs longer than two minutes.
struct Webhook {
    port: u16,
    bodies: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Webhook {
    fn start(answer: Answer) -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s) = (bodies.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let body = read_request(&mut conn);
                b.lock().unwrap().push(body);
                match answer {
                    Answer::Status(code) => {
                        let _ = write!(
                            conn,
                            "HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        );
                    }
                    Answer::Never => {
                        let until = Instant::now() + Duration::from_secs(15);
                        while !s.load(Ordering::SeqCst) && Instant::now() < until {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            }
        });
        Webhook {
            port,
            bodies,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/secret-path-T0KEN", self.port)
    }

    fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one HTTP request; returns its body.
fn read_request(conn: &mut std::net::TcpStream) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                return String::from_utf8_lossy(&data[end + 4..end + 4 + length]).into_owned();
            }
        }
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&data).into_owned(),
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
}

const WEBHOOK_ENV: &str = "IDSYNC_TEST_WEBHOOK";

/// A workspace synced once with `three_people`, whose config notifies the
/// webhook at `url` and allows one removal.
fn notifying_workspace(server: &ScimServer, url: &str) -> Workspace {
    let mut ws = Workspace::new(server);
    ws.write_directory(&three_people());
    ws.sync_ok();
    ws.max_removals = "1".into();
    ws.raw_config =
        Some(ws.config_text() + &format!("notify: {{ webhook_url_env: {WEBHOOK_ENV} }}\n"));
    ws.env.push((WEBHOOK_ENV.into(), url.into()));
    // The URL is a secret: the harness fails a run that prints it.
    ws.extra_secrets.push(url.into());
    ws
}

fn guard_stop_directory() -> Directory {
    let mut d = three_people();
    d.remove_user("u2");
    d.remove_user("u3");
    d
}

#[test]
fn a_guard_stop_and_failed_operations_are_posted_to_the_webhook() {
    let server = ScimServer::start(&fresh_token("ops-notify"));
    let hook = Webhook::start(Answer::Status(200));
    let ws = notifying_workspace(&server, &hook.url());

    // Nothing to say: nothing is posted.
    ws.run(&["sync"]).assert_code(0);
    assert!(hook.bodies().is_empty(), "{:?}", hook.bodies());

    // A guard stop.
    ws.write_directory(&guard_stop_directory());
    let out = ws.run(&["sync"]);
    out.assert_code(3);
    let bodies = hook.bodies();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    let message: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    let text = message["text"].as_str().expect("a text field");
    assert!(
        text.contains("safety guard") && text.contains("nothing was changed"),
        "{text}"
    );
    for secret in [ws.token.as_str(), "grace@example.com", "alan@example.com"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }

    // Failed operations: Alan deleted by hand, then his title changes (404).
    let contents = server.contents();
    let alan = contents.user_id("alan@example.com");
    server.remove_group_member(&contents.group_id("engineering"), &alan);
    server.delete_user(&alan);
    let mut dir = three_people();
    dir.user_mut("u3").title = "Analyst".into();
    ws.write_directory(&dir);
    ws.run(&["sync"]).assert_code(1);
    let bodies = hook.bodies();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    let text = serde_json::from_str::<serde_json::Value>(&bodies[1]).unwrap()["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(text.contains("1 operation failed (exit 1)"), "{text}");
}

#[test]
fn a_failing_webhook_leaves_the_exit_code_unchanged_and_its_url_unprinted() {
    let refused = closed_port_url();
    for (what, hook, url) in [
        (
            "answers 500",
            Some(Webhook::start(Answer::Status(500))),
            None,
        ),
        ("never answers", Some(Webhook::start(Answer::Never)), None),
        (
            "refuses the connection",
            None,
            Some(format!("{refused}/hook")),
        ),
    ] {
        let url = url.unwrap_or_else(|| hook.as_ref().unwrap().url());
        // A server per case keeps the cases independent.
        let server = ScimServer::start(&fresh_token("ops-notify-fail"));
        let ws = notifying_workspace(&server, &url);
        ws.write_directory(&guard_stop_directory());
        let started = Instant::now();
        let out = ws.run(&["sync"]);
        let took = started.elapsed();
        out.assert_code(3);
        assert!(
            out.stderr.contains("notify: the webhook failed"),
            "{what}: {}",
            out.stderr
        );
        // Bounded: the 5 s post timeout, plus the cycle itself.
        assert!(took < Duration::from_secs(30), "{what}: took {took:?}");
        if let Some(hook) = &hook {
            assert_eq!(hook.bodies().len(), 1, "{what}");
        }
    }
}

/// The workspace's config without retries against the target, so a refused
/// connection fails a cycle at once.
fn without_retries(ws: &Workspace) -> String {
    let config = ws.config_text();
    assert!(config.contains("  timeout: 10s\n"));
    config.replace(
        "  timeout: 10s\n",
        "  timeout: 10s\n  retry: { max_attempts: 1, max_elapsed: 1s }\n",
    )
}

#[test]
fn the_daemon_writes_the_metrics_file_after_each_cycle_failed_ones_too() {
    // The target refuses connections: every cycle fails (exit 5); the second
    // failure puts the target into quarantine.
    let mut ws = Workspace::with_target(&closed_port_url(), &fresh_token("ops-daemon"));
    ws.write_directory(&three_people());
    ws.raw_config = Some(without_retries(&ws) + "schedule: { interval: 1s }\n");
    let path = ws.path().join("daemon.prom");
    let running = ws.spawn(&["daemon", "--metrics-file", path.to_str().unwrap()]);
    let read = || std::fs::read_to_string(&path).unwrap_or_default();
    let second_cycle = wait_until(Duration::from_secs(60), || {
        read().contains("\nidsync_quarantined 1\n")
    });
    running.signal("TERM");
    let out = running.wait(Duration::from_secs(30));
    assert!(
        second_cycle,
        "no second cycle in the metrics file:\n{}\n{}",
        read(),
        out.dump()
    );
    out.assert_code(0);
    let m = parse_exposition(&read());
    assert_eq!(m.get("idsync_last_exit_code"), 5.0);
    assert_eq!(m.get("idsync_last_success_timestamp_seconds"), 0.0);
    assert_eq!(m.get("idsync_http_requests_total{code=\"none\"}"), 2.0);
    assert_eq!(m.sum("idsync_operations_total", ""), 0.0);
}

#[test]
fn every_failed_cycle_is_posted_and_entering_quarantine_once() {
    let hook = Webhook::start(Answer::Status(204));
    let mut ws = Workspace::with_target(&closed_port_url(), &fresh_token("ops-notify-q"));
    ws.write_directory(&three_people());
    ws.raw_config =
        Some(without_retries(&ws) + &format!("notify: {{ webhook_url_env: {WEBHOOK_ENV} }}\n"));
    ws.env.push((WEBHOOK_ENV.into(), hook.url()));
    ws.extra_secrets.push(hook.url());
    // Every failed cycle is posted; the second also quarantines, and says so.
    const QUARANTINED: &str =
        "two cycles in a row could not reach the source or the target, so cycles are quarantined";
    for (cycle, quarantined) in [(1, false), (2, true)] {
        ws.run(&["sync"]).assert_code(5);
        let bodies = hook.bodies();
        assert_eq!(bodies.len(), cycle, "{bodies:?}");
        let body = &bodies[cycle - 1];
        assert!(body.contains("the cycle failed: target: "), "{body}");
        assert_eq!(body.contains(QUARANTINED), quarantined, "{body}");
    }
    // Quarantined now: the next sync is held (exit 7) and posts nothing; one
    // that runs anyway and fails again is posted, the quarantine not again.
    ws.run(&["sync"]).assert_code(7);
    assert_eq!(hook.bodies().len(), 2, "{:?}", hook.bodies());
    ws.run(&["sync", "--force"]).assert_code(5);
    let bodies = hook.bodies();
    assert_eq!(bodies.len(), 3, "{bodies:?}");
    assert!(
        bodies[2].contains("the cycle failed: target: "),
        "{}",
        bodies[2]
    );
    assert!(!bodies[2].contains(QUARANTINED), "{}", bodies[2]);
}

#[cfg(unix)]
#[test]
fn a_token_in_a_systemd_credentials_folder_is_read_through_credentials_directory() {
    use std::os::unix::fs::PermissionsExt;
    let server = ScimServer::start(&fresh_token("ops-credentials"));
    let mut ws = Workspace::new(&server);
    // As systemd lays out /run/credentials/UNIT: the folder 0500, files 0400.
    let creds = ws.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("scim-token"), format!("{}\n", ws.token)).unwrap();
    std::fs::set_permissions(
        creds.join("scim-token"),
        std::fs::Permissions::from_mode(0o400),
    )
    .unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o500)).unwrap();
    let config = ws.config_text();
    let needle = format!("token_env: {}", crate::harness::TOKEN_ENV);
    assert!(config.contains(&needle));
    ws.raw_config = Some(config.replace(
        &needle,
        "token_file: \"${CREDENTIALS_DIRECTORY}/scim-token\"",
    ));
    ws.write_directory(&three_people());
    ws.env
        .push(("CREDENTIALS_DIRECTORY".into(), creds.display().to_string()));
    let run = ws.sync_ok();
    assert_eq!(run["summary"]["create_users"], 3, "{run}");
    // Outside systemd the variable is unset: a clear error pointing at LoadCredential=.
    ws.env.clear();
    let out = ws.run(&["validate"]);
    out.assert_code(2);
    assert!(
        out.stderr.contains("CREDENTIALS_DIRECTORY is not set")
            && out.stderr.contains("LoadCredential="),
        "{}",
        out.stderr
    );
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o700)).unwrap();
}

// ---------------------------------------------------------------------------
/// A daemon whose config stops parsing tells the last valid config's webhook
/// once, however many cycles it skips, and once more when it parses again.
#[test]
fn the_daemon_tells_once_that_its_config_broke_and_once_that_it_parses_again() {
    let server = ScimServer::start(&fresh_token("ops-daemon-config"));
    let hook = Webhook::start(Answer::Status(200));
    let mut ws = notifying_workspace(&server, &hook.url());
    let good = ws.config_text() + "schedule: { interval: 1s }\n";
    ws.raw_config = Some(good.clone());
    let mut daemon = ws.spawn(&["daemon"]);
    let runs = |ws: &Workspace| -> usize {
        let status = ws.run(&["status", "--format", "json"]);
        status.json()["runs"].as_array().map_or(0, Vec::len)
    };
    // A cycle of its own on the valid config first (one sync ran by hand).
    assert!(
        wait_until(Duration::from_secs(60), || !daemon.is_running()
            || runs(&ws) >= 2),
        "the daemon ran no cycle"
    );
    assert!(daemon.is_running(), "the daemon exited");

    ws.raw_config = Some(good.clone() + "target: [\n");
    ws.write_config();
    let told = |needle: &str| hook.bodies().iter().filter(|b| b.contains(needle)).count();
    let broken = "the config is invalid, so the daemon runs no cycle until it is fixed";
    assert!(
        wait_until(Duration::from_secs(30), || told(broken) >= 1),
        "no message for the broken config: {:?}",
        hook.bodies()
    );
    // It reads the file again every second meanwhile: still one message.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(told(broken), 1, "{:?}", hook.bodies());
    assert!(told("idsync validate -c") == 1, "{:?}", hook.bodies());

    ws.raw_config = Some(good);
    ws.write_config();
    assert!(
        wait_until(Duration::from_secs(30), || told(
            "the config is valid again"
        ) >= 1),
        "no message for the fixed config: {:?}",
        hook.bodies()
    );
    daemon.signal("TERM");
    let out = daemon.wait(Duration::from_secs(15));
    assert_eq!(out.code, 0, "{}", out.dump());
    assert_eq!(told(broken), 1, "{:?}", hook.bodies());
}

// The daemon on its own

/// A daemon on a one-second interval picks up a change in the source without
/// being asked, and a SIGTERM stops it cleanly (exit 0).
#[test]
fn the_daemon_picks_up_a_source_change_by_itself_and_stops_cleanly_on_sigterm() {
    let (server, mut ws, mut dir) = crate::harness::synced(6, 2);
    crate::faults::edit_config(
        &mut ws,
        &[(
            "state: state/idsync.db\n",
            "state: state/idsync.db\nschedule: { interval: 1s }\n",
        )],
    );
    let mut daemon = ws.spawn(&["daemon"]);
    let runs = |ws: &Workspace| -> usize {
        let status = ws.run(&["status", "--format", "json"]);
        if status.code != 0 {
            return 0;
        }
        status.json()["runs"].as_array().map_or(0, Vec::len)
    };
    // One cycle of its own (the first sync was run by hand).
    assert!(
        wait_until(Duration::from_secs(60), || !daemon.is_running()
            || runs(&ws) >= 2),
        "the daemon ran no cycle"
    );
    if !daemon.is_running() {
        panic!(
            "the daemon exited after a cycle:\n{}",
            daemon.wait(Duration::from_secs(5)).dump()
        );
    }

    // The source changes; nobody asks.
    let user = dir.users[0].clone();
    dir.user_mut(&user.id).title = "Changed While Running".into();
    ws.write_directory(&dir);
    let picked_up = wait_until(Duration::from_secs(60), || {
        server
            .users()
            .iter()
            .any(|u| u["title"] == "Changed While Running")
    });
    assert!(picked_up, "the daemon did not apply the source's change");
    crate::harness::assert_target_matches(&dir, &[], &server.contents());

    daemon.signal("TERM");
    let out = daemon.wait(Duration::from_secs(15));
    assert_eq!(out.code, 0, "{}", out.dump());
}
