//! The command line itself: `validate` (offline, errors with line and column),
//! usage errors, `check`, the human plan output, `IDSYNC_CONFIG`, and secrets never
//! printed (the harness checks the latter on every run of every test).

use std::process::{Command, Stdio};

use crate::harness::{
    Directory, ScimServer, SilentTarget, TOKEN_ENV, UserRow, Workspace, fresh_token, mentions_line,
    synced,
};

#[test]
fn validate_good_config_needs_no_network() {
    // The target accepts connections and counts them; validate must make none.
    let target = SilentTarget::start();
    let ws = Workspace::with_target(&target.base_url(), &fresh_token("validate"));
    ws.write_directory(&Directory::generate(5, 1));
    let out = ws.run(&["validate"]);
    out.assert_code(0);
    assert_eq!(target.accepted(), 0, "validate contacted the target");
    assert!(!ws.state_db().exists(), "validate created the state DB");
}

/// `FILE:LINE:COLUMN`, or `line LINE` with a column mentioned (either wording).
fn mentions_line_and_column(text: &str, line: usize) -> bool {
    let colon_form = text.match_indices(&format!(":{line}:")).any(|(i, m)| {
        let before_ok = !text[..i].ends_with(|c: char| c.is_ascii_digit());
        let after = &text[i + m.len()..];
        before_ok && after.starts_with(|c: char| c.is_ascii_digit())
    });
    colon_form || (mentions_line(text, line) && text.to_lowercase().contains("col"))
}

#[test]
fn validate_unknown_key_names_line_and_column() {
    let mut ws = Workspace::with_target("http://127.0.0.1:9/v2", &fresh_token("badkey"));
    let good = ws.config_text();
    // A new line 6 holds an unknown key (a typo of `token_env`).
    let mut lines: Vec<String> = good.lines().map(str::to_owned).collect();
    assert!(lines[4].trim_start().starts_with("base_url"), "{good}");
    lines.insert(5, "  tokn_env: OOPS".into());
    ws.raw_config = Some(lines.join("\n") + "\n");
    let out = ws.run(&["validate"]);
    out.assert_code(2);
    assert!(
        mentions_line_and_column(&out.stderr, 6),
        "should name line 6 and its column\n{}",
        out.dump()
    );
    assert!(
        out.stderr.contains("tokn_env"),
        "should name the key\n{}",
        out.dump()
    );
}

#[test]
fn validate_bad_indentation_names_line_and_column() {
    let mut ws = Workspace::with_target("http://127.0.0.1:9/v2", &fresh_token("indent"));
    let good = ws.config_text();
    let mut lines: Vec<String> = good.lines().map(str::to_owned).collect();
    // Line 5 (`base_url:` under `target:`) indented one more than its siblings.
    assert_eq!(lines[3].trim(), "kind: scim", "{good}");
    lines[4] = format!("   {}", lines[4].trim_start());
    ws.raw_config = Some(lines.join("\n") + "\n");
    let out = ws.run(&["validate"]);
    out.assert_code(2);
    assert!(
        mentions_line_and_column(&out.stderr, 5),
        "should name line 5 and its column\n{}",
        out.dump()
    );
}

#[test]
fn validate_names_a_missing_mapping_file() {
    let mut ws = Workspace::with_target("http://127.0.0.1:9/v2", &fresh_token("inline"));
    let good = ws.config_text();
    ws.raw_config = Some(good.replace(
        "mapping: ",
        "mapping: /nonexistent/idsync-e2e/mapping.yaml\n# was: ",
    ));
    let out = ws.run(&["validate"]);
    out.assert_code(2);
    assert!(out.stderr.contains("mapping.yaml"), "{}", out.dump());
}

#[test]
fn usage_errors_exit_2() {
    let ws = Workspace::with_target("http://127.0.0.1:9/v2", &fresh_token("usage"));
    ws.run(&["frobnicate"]).assert_code(2);
    ws.run(&["plan", "--format", "yaml"]).assert_code(2);
    ws.run(&["sync", "--no-such-flag"]).assert_code(2);
    // A config that does not exist.
    let out = Command::new(env!("CARGO_BIN_EXE_idsync"))
        .args(["validate", "-c", "/nonexistent/idsync-e2e/config.yaml"])
        .env("NO_COLOR", "1")
        .env_remove("IDSYNC_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run idsync");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn config_from_environment_variable() {
    let server = ScimServer::start(&fresh_token("envcfg"));
    let ws = Workspace::new(&server);
    ws.write_directory(&Directory::generate(5, 1));
    ws.write_config();
    let out = Command::new(env!("CARGO_BIN_EXE_idsync"))
        .args(["plan", "--format", "json"])
        .current_dir(ws.path())
        .env("IDSYNC_CONFIG", ws.config_path())
        .env(TOKEN_ENV, &ws.token)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run idsync");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(!stdout.contains(&ws.token) && !stderr.contains(&ws.token));
    let plan: serde_json::Value = serde_json::from_str(stdout.trim()).expect("plan JSON");
    assert_eq!(plan["summary"]["create_users"], 5, "{plan}");
}

#[test]
fn check_reaches_the_target() {
    let server = ScimServer::start(&fresh_token("check"));
    let ws = Workspace::new(&server);
    ws.write_directory(&Directory::generate(5, 1));
    ws.run(&["check"]).assert_code(0);
    assert!(server.users().is_empty(), "check must not write");
}

#[test]
fn human_plan_output() {
    let (_server, ws, mut dir) = synced(20, 3);
    dir.user_mut("u0003").title = "Lead".into();
    dir.remove_user("u0004");
    dir.users
        .push(UserRow::new("u9003", "human@example.com", "Hu", "Man"));
    ws.write_directory(&dir);

    let out = ws.run(&["plan"]);
    out.assert_code(0);
    let text = &out.stdout;
    let has_line = |prefix: &str, needle: &str| {
        text.lines()
            .any(|l| l.trim_start().starts_with(prefix) && l.contains(needle))
    };
    assert!(
        has_line("+ create user", "human@example.com"),
        "no `+ create user human@example.com` line\n{}",
        out.dump()
    );
    assert!(
        has_line("~ update user", &dir.user("u0003").user_name()),
        "no `~ update user …` line\n{}",
        out.dump()
    );
    assert!(
        has_line("- disable user", "user0004@example.com"),
        "no `- disable user …` line\n{}",
        out.dump()
    );
    assert!(
        text.contains("Lead"),
        "the update should show the new title\n{}",
        out.dump()
    );
    assert!(!text.contains('\u{1b}'), "NO_COLOR output has escape codes");
    assert!(
        !out.stderr.contains('\u{1b}'),
        "NO_COLOR output has escape codes"
    );
}

#[test]
fn version_says_the_commit_and_features_in_text_and_json() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_idsync"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let long = run(&["--version"]);
    let json: serde_json::Value = serde_json::from_str(&run(&["version", "--format", "json"]))
        .expect("version --format json prints one JSON object");
    let commit = json["commit"].as_str().expect("commit is a string");
    assert!(!commit.is_empty());
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    // Built from a git checkout without an override: the commit is HEAD's.
    let head = Command::new("git")
        .args(["rev-parse", "--short=10", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    if let Ok(head) = head
        && head.status.success()
        && option_env!("IDSYNC_BUILD_COMMIT").is_none()
    {
        let head = String::from_utf8(head.stdout).unwrap();
        assert!(commit.starts_with(head.trim()), "{commit} vs HEAD {head}");
    }
    assert!(
        long.starts_with(&format!(
            "idsync {} (commit {commit})",
            env!("CARGO_PKG_VERSION")
        )),
        "{long}"
    );
    for feature in json["features"].as_array().unwrap() {
        assert!(long.contains(feature.as_str().unwrap()), "{long}");
    }
    // `idsync version` says the same as `--version`.
    assert_eq!(run(&["version"]), long);
}
