//! `idsync report --html`: the page opened in headless Chromium (Debian's
//! `chromium`, installed by scripts/test-env.sh): a screenshot is taken, and the
//! DOM Chromium built is checked — one chart mark per run, the last run's
//! operations in the table, and nothing that could load from the network.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use regex::Regex;

use crate::harness::{ChildGuard, Directory, Idsync, ScimServer, UserRow, Workspace, fresh_token};

/// How long one Chromium run may take before it is killed.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(90);

fn chromium() -> PathBuf {
    let path = std::env::var_os("IDSYNC_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "{} does not exist\nhint: run scripts/test-env.sh (it installs Debian's chromium)",
        path.display()
    );
    path
}

/// Runs headless Chromium on `page` with `extra` flags, in a new empty
/// profile, bounded by [`CHROMIUM_TIMEOUT`]; returns its stdout.
pub(crate) fn run_chromium(page: &Path, extra: &[String]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(extra)
    .arg(format!("file://{}", page.display()))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("start chromium");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let mut guard = ChildGuard::new(child, "chromium");
    let started = Instant::now();
    let code = loop {
        if let Some(code) = guard.try_exit_code() {
            break code;
        }
        assert!(
            started.elapsed() < CHROMIUM_TIMEOUT,
            "chromium did not finish within {CHROMIUM_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(guard);
    let out = reader.join().expect("stdout reader");
    assert_eq!(code, 0, "chromium exited with {code}");
    out
}

fn user(id: &str, email: &str, given: &str, family: &str) -> UserRow {
    UserRow::new(id, email, given, family)
}

#[test]
fn the_html_report_renders_in_chromium_with_a_mark_per_run_and_the_last_runs_operations() {
    let server = ScimServer::start(&fresh_token("report-html"));
    let ws = Workspace::new(&server);
    let mut dir = Directory {
        users: vec![
            user("u1", "ada@example.com", "Ada", "Lovelace"),
            user("u2", "grace@example.com", "Grace", "Hopper"),
            user("u3", "alan@example.com", "Alan", "Turing"),
        ],
        groups: [(
            "engineering".to_owned(),
            vec!["u1".to_owned(), "u2".to_owned(), "u3".to_owned()],
        )]
        .into_iter()
        .collect(),
    };
    ws.write_directory(&dir);
    ws.sync_ok();
    // The second run: a title changes, Alan leaves (disabled, out of the group).
    dir.user_mut("u2").title = "Rear Admiral".into();
    dir.remove_user("u3");
    ws.write_directory(&dir);
    ws.sync_ok();

    let page = ws.path().join("report.html");
    let page_arg = page.display().to_string();
    ws.run(&["report", "--html", &page_arg, "--since", "30d"])
        .assert_code(0);
    let html = std::fs::read_to_string(&page).expect("report written");
    assert!(
        html.contains(r#"content="default-src 'none';"#),
        "no Content-Security-Policy"
    );

    let status = ws.run(&["status", "--format", "json"]);
    status.assert_code(0);
    let runs = status.json()["runs"].as_array().expect("runs").len();
    assert_eq!(runs, 2);

    let dom = run_chromium(&page, &["--dump-dom".to_owned()]);
    assert!(dom.contains("<svg id=\"ops-chart\""), "{dom}");
    assert_eq!(dom.matches("class=\"run-mark\"").count(), runs, "{dom}");
    assert_eq!(dom.matches("class=\"users-point\"").count(), runs, "{dom}");
    let row = Regex::new(r#"<tr class="op (\w+)"><td>\d+</td><td>(\w+)</td><td>([^<]*)</td>"#)
        .expect("row regex");
    let mut rows: Vec<(String, String, String)> = row
        .captures_iter(&dom)
        .map(|c| (c[2].to_owned(), c[3].to_owned(), c[1].to_owned()))
        .collect();
    rows.sort();
    let expected = [
        ("disable_user", "u3", "applied"),
        ("remove_members", "engineering", "applied"),
        ("update_user", "u2", "applied"),
    ];
    assert_eq!(
        rows,
        expected.map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned())),
        "{dom}"
    );
    // Nothing on the page can reach the network: no external reference at all.
    assert_refers_to_nothing(&dom, &["http://www.w3.org/2000/svg"]);
    assert_screenshot(&page, &ws.path().join("report.png"));
}

/// Asserts that the DOM Chromium built refers to nothing outside the page
/// (no `src`, `href`, `url(`, `@import` or address), but the text that
/// starts with one of `allowed`.
pub(crate) fn assert_refers_to_nothing(dom: &str, allowed: &[&str]) {
    let external = Regex::new(
        r#"(?i)\b(src|href|action|srcset|poster)\s*=|url\(|@import|https?://[^"\s]*[^"\s/]"#,
    )
    .expect("regex");
    let found: Vec<&str> = external
        .find_iter(dom)
        .map(|m| m.as_str())
        .filter(|m| !allowed.iter().any(|a| m.starts_with(a)))
        .collect();
    assert!(found.is_empty(), "external references: {found:?}");
}

/// Takes a screenshot of `page` into `shot` with Chromium, and checks it is one.
pub(crate) fn assert_screenshot(page: &Path, shot: &Path) {
    run_chromium(
        page,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1000,1400".to_owned(),
        ],
    );
    let png = std::fs::read(shot).expect("screenshot written");
    assert!(png.len() > 1000 && png.starts_with(b"\x89PNG"), "not a PNG");
}
