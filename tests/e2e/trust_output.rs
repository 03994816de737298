//! What comes from outside is not trusted: a target that echoes our request
//! headers (bearer token included) or sends a megabyte of `detail`, error
//! messages and directory values carrying newlines, escape sequences or
//! bidirectional overrides. None of it may reach stdout, stderr, `status` or the
//! state DB as it is: credentials are redacted, sizes capped, text escaped.

use std::sync::Arc;

use crate::faults::{Rig, rig};
use crate::harness::{Output, Workspace};
use crate::proxy::{Fault, Schedule};

/// The user whose create the proxy answers with `fault`; everything else is
/// forwarded.
const VICTIM: &str = "u0003";

/// Answers every `POST /Users` for [`VICTIM`] with `fault`.
fn refuse_victim(victim_email: String, fault: Fault) -> Schedule {
    Arc::new(move |r| {
        if r.is("POST", "Users") && r.body.contains(&victim_email) {
            fault.clone()
        } else {
            Fault::Forward
        }
    })
}

/// A rig of 12 users whose target refuses [`VICTIM`]'s create with `fault`.
fn refusing_rig(tag: &str, fault: impl FnOnce(&str) -> Fault) -> Rig {
    let r = rig(tag, 12, 2, crate::proxy::pass_through());
    let email = r.dir.user(VICTIM).email.clone();
    r.proxy
        .set_schedule(refuse_victim(email.clone(), fault(&email)));
    r
}

/// Every file of the state DB (the DB, its WAL and journal) as bytes.
fn state_files(ws: &Workspace) -> Vec<(String, Vec<u8>)> {
    let db = ws.state_db();
    ["", "-wal", "-journal", "-shm"]
        .iter()
        .filter_map(|suffix| {
            let path = format!("{}{suffix}", db.display());
            std::fs::read(&path).ok().map(|b| (path, b))
        })
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `sync` (text and JSON logs, text and JSON summary) twice, then `status` as
/// text and JSON; the harness checks each run's stdout and stderr for the token.
fn sync_and_inspect(ws: &Workspace) -> Vec<Output> {
    let mut outs = vec![
        ws.run(&["sync"]),
        ws.run(&["sync", "--format", "json", "--log-format", "json"]),
    ];
    for out in &outs {
        out.assert_code(1);
    }
    for args in [&["status"][..], &["status", "--format", "json"][..]] {
        let out = ws.run(args);
        out.assert_code(0);
        outs.push(out);
    }
    outs
}

#[test]
fn a_target_echoing_the_authorization_header_never_gets_the_token_printed_or_stored() {
    let r = refusing_rig("echo", |_| Fault::EchoHeaders(400));
    let outs = sync_and_inspect(&r.ws);
    assert!(
        r.proxy.count_fault("echo-headers") >= 2,
        "{}",
        r.proxy.summary()
    );
    // The echo did arrive, with the credential replaced.
    let status = &outs[2];
    assert!(
        status.stdout.contains("Bearer [redacted]"),
        "status should show the redacted echo\n{}",
        status.dump()
    );
    for (path, bytes) in state_files(&r.ws) {
        assert!(
            !contains(&bytes, r.ws.token.as_bytes()),
            "the bearer token is stored in {path}"
        );
    }
}

/// A `detail` of 2 MB.
const HUGE: usize = 2_000_000;

/// The longest line idsync may print for one failed operation: the kept
/// detail (a few KB) and the words around it.
const MAX_LINE: usize = 8 * 1024;

#[test]
fn a_huge_error_detail_is_cut_in_the_state_db_and_the_output() {
    let r = refusing_rig("huge", |_| Fault::HugeDetail(400, HUGE));
    let outs = sync_and_inspect(&r.ws);
    assert!(
        r.proxy.count_fault("huge-detail") >= 2,
        "{}",
        r.proxy.summary()
    );
    let stored: usize = state_files(&r.ws).iter().map(|(_, b)| b.len()).sum();
    assert!(
        stored < HUGE / 2,
        "the state DB holds {stored} bytes after two cycles with a {HUGE}-byte detail"
    );
    for out in &outs {
        for line in out.stdout.lines().chain(out.stderr.lines()) {
            assert!(
                line.len() <= MAX_LINE,
                "a {}-byte line in the output of `idsync {}`",
                line.len(),
                out.args.join(" ")
            );
        }
    }
    assert!(
        outs[2]
            .stdout
            .contains(&format!("(cut, {HUGE} bytes in all)"))
            || outs[2].stdout.contains("bytes in all)"),
        "status should say the detail was cut\n{}",
        outs[2].stdout.chars().take(4000).collect::<String>()
    );
}

/// A line a forged detail tries to start.
const FORGED: &str = "INFO sync complete: 0 failed";

#[test]
fn a_target_detail_with_newlines_and_escape_sequences_cannot_forge_output() {
    let r = refusing_rig("forge", |_| {
        Fault::Status(400, format!("refused\n{FORGED}\u{1b}[2J\r\n{FORGED}"))
    });
    let outs = sync_and_inspect(&r.ws);
    for out in &outs {
        for (stream, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            assert!(
                !text.contains('\u{1b}'),
                "an escape sequence reached the {stream} of `idsync {}`\n{}",
                out.args.join(" "),
                out.dump()
            );
            assert!(
                !text.lines().any(|l| l.trim_start().starts_with(FORGED)),
                "a forged line in the {stream} of `idsync {}`\n{}",
                out.args.join(" "),
                out.dump()
            );
        }
    }
    assert!(
        outs[0].stdout.contains("refused\\nINFO"),
        "the run summary shows the detail escaped\n{}",
        outs[0].dump()
    );
}

#[test]
fn a_bidi_override_in_a_name_is_shown_escaped_in_the_plan() {
    let mut r = rig("bidi", 6, 1, crate::proxy::pass_through());
    {
        let user = r.dir.user_mut("u0002");
        user.display_name = "Ann \u{202e}gpj.exe".into();
        user.email = "ann\u{202e}moc.evil@example.com".into();
    }
    r.ws.write_directory(&r.dir);
    let out = r.ws.run(&["plan"]);
    assert!(
        !out.stdout.contains('\u{202e}') && !out.stderr.contains('\u{202e}'),
        "U+202E reached the plan output unescaped\n{}",
        out.dump()
    );
    assert!(
        out.stdout.contains("ann\\u{202e}moc.evil@example.com"),
        "the userName should be shown escaped\n{}",
        out.dump()
    );
}

#[test]
fn credentials_in_base_url_are_refused_and_plain_http_is_warned_about() {
    let mut ws = Workspace::with_target("https://sync:pw-in-url-77@scim.example.invalid/v2", "t0k");
    ws.extra_secrets.push("pw-in-url-77".into());
    let out = ws.run(&["validate"]);
    out.assert_code(2);
    // `base_url` is on line 5 of the generated config; its value at column 13.
    assert!(
        out.stderr
            .contains("config.yaml:5:13: base_url must not carry credentials"),
        "{}",
        out.dump()
    );
    let ws = Workspace::with_target("http://scim.example.invalid/v2", "t0k");
    let out = ws.run(&["validate"]);
    out.assert_code(0);
    assert!(
        out.stderr
            .contains("warning: target base_url scim.example.invalid is plain http://"),
        "{}",
        out.dump()
    );
}

#[test]
fn explain_names_the_records_own_line_in_a_crlf_file() {
    let server = crate::harness::ScimServer::start(&crate::harness::fresh_token("crlf"));
    let ws = Workspace::new(&server);
    let dir = crate::harness::Directory::generate(8, 1);
    let line = dir.line_of(VICTIM);
    for (ending, name) in [("\n", "LF"), ("\r\n", "CRLF")] {
        ws.write_file(
            "users.csv",
            dir.users_csv().replace('\n', ending).as_bytes(),
        );
        ws.write_file(
            "groups.csv",
            dir.groups_csv().replace('\n', ending).as_bytes(),
        );
        let out = ws.run(&["explain", VICTIM]);
        out.assert_code(0);
        assert!(
            out.stdout
                .contains(&format!("Source record: users.csv line {line} ")),
            "{name}: expected line {line}\n{}",
            out.dump()
        );
    }
}

#[test]
fn a_users_file_that_is_a_folder_is_a_data_error_saying_so() {
    let server = crate::harness::ScimServer::start(&crate::harness::fresh_token("folder"));
    let ws = Workspace::new(&server);
    std::fs::create_dir(ws.path().join("users-dir")).expect("mkdir");
    let mut ws = ws;
    crate::faults::edit_config(&mut ws, &[("users: users.csv", "users: users-dir")]);
    for args in [&["plan"][..], &["sync"][..]] {
        let out = ws.run(args);
        out.assert_code(2);
        assert!(
            out.stderr.contains("users-dir is a folder, not a CSV file")
                && !out.stderr.contains("line 0"),
            "{}",
            out.dump()
        );
    }
}

#[test]
fn a_read_only_state_db_is_an_environment_error_naming_the_file() {
    use std::os::unix::fs::PermissionsExt;
    let (_server, ws, _dir) = crate::harness::synced(5, 1);
    // Root writes whatever the mode says: the refusal cannot be shown as root
    // (the unit test in src/state covers the check itself).
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    if uid.is_ok_and(|uid| uid == 0) {
        eprintln!("skipped: running as root");
        return;
    }
    let db = ws.state_db();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).expect("chmod");
    let out = ws.run(&["sync"]);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod back");
    out.assert_code(2);
    assert!(
        out.stderr
            .contains(&format!("state DB {} cannot be written", db.display())),
        "{}",
        out.dump()
    );
}

/// A rig whose retry budget is `retry` and whose target answers [`VICTIM`]'s
/// create with `fault` the first `times` times.
fn throttling_rig(tag: &str, retry: &str, fault: Fault, times: usize) -> Rig {
    let mut r = rig(tag, 8, 1, crate::proxy::pass_through());
    crate::faults::edit_config(
        &mut r.ws,
        &[(
            crate::faults::DEFAULT_RATE,
            &format!("{}\n  retry: {retry}", crate::faults::DEFAULT_RATE),
        )],
    );
    let email = r.dir.user(VICTIM).email.clone();
    let answered = std::sync::atomic::AtomicUsize::new(0);
    r.proxy.set_schedule(Arc::new(move |req| {
        if req.is("POST", "Users")
            && req.body.contains(&email)
            && answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < times
        {
            fault.clone()
        } else {
            Fault::Forward
        }
    }));
    r
}

#[test]
fn a_429_naming_its_reset_paces_without_using_up_attempts() {
    // Four 429s in a row with Retry-After: 1, and only two attempts allowed.
    let r = throttling_rig(
        "paced",
        "{ max_attempts: 2, max_elapsed: 1m }",
        Fault::RetryAfter(1),
        4,
    );
    let out = r.ws.run(&["sync", "--format", "json"]);
    out.assert_code(0);
    assert_eq!(
        r.proxy.count_fault("429-retry-after"),
        4,
        "{}",
        r.proxy.summary()
    );
    crate::faults::assert_exact(&r.server, &r.ws, &r.dir);
}

#[test]
fn a_429_reset_past_max_elapsed_fails_the_operation_saying_why() {
    let r = throttling_rig(
        "paced-long",
        "{ max_attempts: 6, max_elapsed: 3s }",
        Fault::RetryAfter(120),
        1,
    );
    let out = r.ws.run(&["sync"]);
    out.assert_code(1);
    assert!(
        out.stdout.contains(
            "(HTTP 429): rate limited (HTTP 429): the target asks to wait 120s, more than the "
        ) && out.stdout.contains("s left of retry.max_elapsed"),
        "{}",
        out.dump()
    );
    assert_eq!(
        r.proxy.count_fault("429-retry-after"),
        1,
        "{}",
        r.proxy.summary()
    );
}
