//! A hostile target and a hostile source: every string either can put in front
//! of an operator carries control characters, ANSI escape sequences (colour,
//! screen clearing, a window title), carriage returns, bidirectional overrides
//! and newlines followed by lines that look like idsync's own (`error: fake`,
//! `hint: fake`, `WARN fake`). Every command that prints anything is run
//! against it — `check`, `plan`, `sync` with failures, `sync --full`, a daemon
//! cycle, `status`, `log` (text, JSON, CSV), `report --html`, `explain`, with
//! text and JSON logs — and none of what they print may carry such a character
//! raw (the line-ending `\n` aside) or start a forged line.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::faults::{Rig, edit_config, rig};
use crate::harness::{Directory, Output, ScimServer, Workspace, fresh_token, wait_until};
use crate::proxy::{Answer, Exchange, Quirk, Upstream, pass_through};

/// The `detail` of every error the hostile target answers.
const DETAIL: &str =
    "boom\nerror: fake\u{1b}[31m\r\u{202e}gpj.exe\nhint: fake\u{7}\r\nWARN fake\u{1b}[2J";
/// What the hostile target says every user's `title` is.
const TITLE: &str = "\u{1b}]0;pwn\u{7}Boss\nWARN fake\u{1b}[0m";
/// What the hostile target says every user's `displayName` is.
const DISPLAY: &str = "Mallory\r\nerror: fake\u{202e}\u{1b}[2J";
/// What the hostile target says every group's `displayName` is.
const GROUP: &str = "eng\nhint: fake\u{202e}\u{1b}[1m";

/// Lines the hostile strings try to start.
const FORGED: &[&str] = &["error: fake", "hint: fake", "WARN fake"];

/// The user whose create the hostile target refuses (400).
const REFUSED: &str = "u0003";
/// The user whose create the hostile target answers 409.
const CONFLICT: &str = "u0004";
/// The user whose source values are hostile.
const HOSTILE_SOURCE: &str = "u0002";

/// A target that puts [`DETAIL`] into every error it can, and hostile values
/// into everything it is asked to read back: `/Schemas` fails every other
/// time (so `/ResourceTypes`, which also fails, is asked too), creates of
/// [`REFUSED`] and [`CONFLICT`] fail with 400 and 409, every user PATCH fails,
/// `/ServiceProviderConfig`'s strings carry the detail, and the users and
/// groups read back carry [`TITLE`], [`DISPLAY`] and [`GROUP`].
struct HostileTarget {
    schema_reads: AtomicUsize,
    refused_email: String,
    conflict_email: String,
}

impl Quirk for HostileTarget {
    fn request(&self, req: &mut Exchange, _: &Upstream) -> Option<Answer> {
        match (req.method.as_str(), req.resource()) {
            // 400, not 500: a 5xx would be retried, and the retry answered.
            ("GET", "Schemas") => self
                .schema_reads
                .fetch_add(1, Ordering::SeqCst)
                .is_multiple_of(2)
                .then(|| Answer::error(400, DETAIL)),
            ("GET", "ResourceTypes") => Some(Answer::error(400, DETAIL)),
            ("POST", "Users") if req.body.contains(&self.refused_email) => {
                Some(Answer::error(400, DETAIL))
            }
            ("POST", "Users") if req.body.contains(&self.conflict_email) => {
                Some(Answer::error(409, DETAIL))
            }
            ("PATCH", "Users") => Some(Answer::error(400, DETAIL)),
            _ => None,
        }
    }

    fn response(&self, req: &Exchange, answer: &mut Answer, _: &Upstream) {
        if req.method != "GET" || answer.status != 200 {
            return;
        }
        let Some(mut doc) = answer.json() else {
            return;
        };
        match req.resource() {
            "ServiceProviderConfig" => {
                doc["documentationUri"] = DETAIL.into();
                if let Some(schemes) = doc["authenticationSchemes"].as_array_mut() {
                    for s in schemes {
                        s["name"] = DETAIL.into();
                        s["description"] = DETAIL.into();
                    }
                }
            }
            "Users" => each_resource(&mut doc, |u| {
                u["title"] = TITLE.into();
                u["displayName"] = DISPLAY.into();
            }),
            "Groups" => each_resource(&mut doc, |g| g["displayName"] = GROUP.into()),
            _ => return,
        }
        answer.body = doc.to_string();
    }
}

/// Applies `edit` to a single resource or to each one of a list response.
fn each_resource(doc: &mut Value, edit: impl Fn(&mut Value)) {
    if let Some(list) = doc.get_mut("Resources").and_then(Value::as_array_mut) {
        list.iter_mut().for_each(edit);
    } else if doc.get("id").is_some() {
        edit(doc);
    }
}

/// A rig of 8 users behind [`HostileTarget`], with a one-second daemon
/// schedule and [`HOSTILE_SOURCE`]'s source values hostile too.
fn hostile_rig(tag: &str) -> Rig {
    let mut r = rig(tag, 8, 2, pass_through());
    make_source_hostile(&mut r.dir);
    r.ws.write_directory(&r.dir);
    r.proxy.set_quirks(vec![Arc::new(HostileTarget {
        schema_reads: AtomicUsize::new(0),
        refused_email: r.dir.user(REFUSED).email.clone(),
        conflict_email: r.dir.user(CONFLICT).email.clone(),
    })]);
    edit_config(
        &mut r.ws,
        &[(
            "state: state/idsync.db\n",
            "state: state/idsync.db\nschedule: { interval: 1s }\n",
        )],
    );
    r
}

/// [`HOSTILE_SOURCE`]'s display name, title and department carry the hostile
/// strings, as a directory export could.
fn make_source_hostile(dir: &mut Directory) {
    let user = dir.user_mut(HOSTILE_SOURCE);
    user.display_name = DISPLAY.into();
    user.title = TITLE.into();
    user.department = format!("R&D{DETAIL}");
}

/// A character that must never reach a terminal raw: any control character
/// but the line-ending `\n`, a line or paragraph separator, or a bidi or
/// zero-width format character.
fn hostile_char(c: char) -> bool {
    (c.is_control() && c != '\n')
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}' | '\u{feff}'
        )
}

/// What is wrong with `text` (the `stream` of `idsync ARGS`): raw hostile
/// characters, forged lines.
fn violations(what: &str, text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (n, line) in text.split('\n').enumerate() {
        if let Some(c) = line.chars().find(|c| hostile_char(*c)) {
            found.push(format!(
                "{what} line {}: a raw {:?} in {:?}",
                n + 1,
                c,
                line.chars().take(300).collect::<String>()
            ));
        }
        let bare = line.trim_start();
        if let Some(forged) = FORGED.iter().find(|f| bare.starts_with(*f)) {
            found.push(format!(
                "{what} line {}: a forged {forged:?} line: {:?}",
                n + 1,
                line.chars().take(300).collect::<String>()
            ));
        }
    }
    found
}

/// Runs each command and collects every violation, so one failure shows all
/// of them.
struct Sweep<'a> {
    ws: &'a Workspace,
    found: Vec<String>,
    outputs: Vec<Output>,
}

impl<'a> Sweep<'a> {
    fn new(ws: &'a Workspace) -> Self {
        Sweep {
            ws,
            found: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// Runs `idsync ARGS`; it must end with one of idsync's own exit codes.
    fn run(&mut self, args: &[&str]) -> Output {
        let out = self.ws.run(args);
        self.check(&out);
        out
    }

    fn check(&mut self, out: &Output) {
        let cmd = format!("`idsync {}`", out.args.join(" "));
        assert!(
            (0..=5).contains(&out.code),
            "{cmd} crashed or was killed (exit {})\n{}",
            out.code,
            out.dump()
        );
        self.found
            .extend(violations(&format!("{cmd} stdout"), &out.stdout));
        self.found
            .extend(violations(&format!("{cmd} stderr"), &out.stderr));
        self.outputs.push(out.clone());
    }

    fn check_file(&mut self, path: &Path) {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        // The page's own markup is indented with spaces and tabs.
        let text = text.replace('\t', " ");
        self.found
            .extend(violations(&path.display().to_string(), &text));
    }

    /// Everything printed so far, stdout and stderr.
    fn all_text(&self) -> String {
        self.outputs
            .iter()
            .map(|o| format!("{}\n{}", o.stdout, o.stderr))
            .collect()
    }

    fn finish(self) {
        assert!(
            self.found.is_empty(),
            "{} raw hostile characters or forged lines reached the output:\n{}",
            self.found.len(),
            self.found.join("\n")
        );
    }
}

/// The highest id of a finished run that `status` shows (0 before any run
/// or while unreadable).
fn last_finished_run(ws: &Workspace) -> i64 {
    let out = ws.run(&["status", "--format", "json"]);
    if out.code != 0 {
        return 0;
    }
    out.json()["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| !r["ended_at"].is_null())
        .filter_map(|r| r["id"].as_i64())
        .max()
        .unwrap_or(0)
}

#[test]
fn a_newline_in_a_schema_error_detail_never_reaches_the_log_raw() {
    let r = hostile_rig("schema-detail");
    let mut sweep = Sweep::new(&r.ws);
    // The first `/Schemas` read fails with the hostile detail.
    let check = sweep.run(&["check"]);
    check.assert_code(0);
    assert!(
        check
            .stderr
            .lines()
            .any(|l| l.contains("RFC 7643 defaults assumed")
                && l.contains("boom\\nerror: fake\\u{1b}[31m\\r\\u{202e}gpj.exe")),
        "the log should say the defaults are assumed, with the target's detail escaped\n{}",
        check.dump()
    );
    // The second reads `/Schemas`, and `/ResourceTypes` fails.
    let check = sweep.run(&["check"]);
    check.assert_code(0);
    for args in [
        &["plan", "--full"][..],
        &["plan", "--full", "--log-format", "json"][..],
    ] {
        let out = sweep.run(args);
        for line in out.stderr.lines().filter(|l| l.starts_with('{')) {
            assert!(
                serde_json::from_str::<Value>(line).is_ok(),
                "a JSON log line that is not JSON: {line}"
            );
        }
    }
    sweep.finish();
}

#[test]
fn a_hostile_target_cannot_put_a_raw_control_character_in_any_output() {
    let r = hostile_rig("hostile");
    let ws = &r.ws;
    let mut sweep = Sweep::new(ws);
    sweep.run(&["check"]);
    sweep.run(&["check"]);
    sweep.run(&["plan"]);
    sweep.run(&["plan", "--full", "--detail"]);
    sweep.run(&["sync", "--dry-run"]);
    let first = sweep.run(&["sync"]);
    first.assert_code(1);
    assert!(
        first.stdout.contains("boom\\nerror: fake"),
        "the run summary should show the target's detail, escaped\n{}",
        first.dump()
    );
    sweep.run(&["sync", "--format", "json"]);
    sweep.run(&["sync", "--full"]);
    let json_log = sweep.run(&["sync", "--full", "--log-format", "json", "-v"]);
    for line in json_log.stderr.lines().filter(|l| l.starts_with('{')) {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "a JSON log line that is not JSON: {line}"
        );
    }
    sweep.run(&["plan"]);
    sweep.run(&["plan", "--full", "-vv"]);
    sweep.run(&["plan", "--full", "--format", "json"]);

    // One whole daemon cycle, then the daemon is stopped by its PID.
    let before = last_finished_run(ws);
    let mut daemon = ws.spawn(&["daemon"]);
    let cycled = wait_until(Duration::from_secs(60), || {
        !daemon.is_running() || last_finished_run(ws) > before
    });
    daemon.signal("TERM");
    let out = daemon.wait(Duration::from_secs(30));
    assert!(cycled, "the daemon ran no cycle\n{}", out.dump());
    sweep.check(&out);

    for args in [
        &["status"][..],
        &["status", "--format", "json"][..],
        &["log"][..],
        &["log", "--format", "json"][..],
        &["log", "--format", "csv"][..],
        &["explain", REFUSED][..],
        &["explain", CONFLICT][..],
        &["explain", HOSTILE_SOURCE][..],
    ] {
        sweep.run(args).assert_code(0);
    }
    let html = ws.path().join("report.html");
    sweep
        .run(&["report", "--html", html.to_str().expect("utf-8 path")])
        .assert_code(0);
    sweep.check_file(&html);

    let all = sweep.all_text();
    for shown in ["boom\\nerror: fake", "\\u{202e}", "\\u{1b}]0;pwn\\u{7}"] {
        assert!(
            all.contains(shown),
            "no output showed {shown:?}: the hostile values never reached a message"
        );
    }
    sweep.finish();
}

#[test]
fn control_characters_in_csv_values_and_headers_never_reach_the_output_raw() {
    let server = ScimServer::start(&fresh_token("hostile-csv"));
    let ws = Workspace::new(&server);
    let mut dir = Directory::generate(6, 2);
    make_source_hostile(&mut dir);
    ws.write_directory(&dir);
    let mut sweep = Sweep::new(&ws);
    sweep.run(&["plan"]).assert_code(0);
    sweep.run(&["sync"]).assert_code(0);
    dir.user_mut(HOSTILE_SOURCE).title = format!("{TITLE}\u{202e}2");
    ws.write_directory(&dir);
    sweep.run(&["plan", "--detail"]).assert_code(0);
    sweep.run(&["sync", "--detail"]).assert_code(0);
    sweep.run(&["plan", "--full"]).assert_code(0);
    for args in [
        &["status"][..],
        &["log"][..],
        &["log", "--format", "json"][..],
        &["log", "--format", "csv"][..],
        &["explain", HOSTILE_SOURCE][..],
    ] {
        sweep.run(args).assert_code(0);
    }
    assert!(
        sweep.all_text().contains("\\u{1b}]0;pwn\\u{7}"),
        "no output showed the hostile title, escaped"
    );

    // A header whose column names carry the same: the error lists the columns.
    let header = String::from(
        "\"key\nerror: fake\u{1b}[2J\",email,given_name,family_name,display_name,title,department,\"active\r\nhint: fake\u{202e}\"\n",
    );
    let body: String = dir.users_csv().lines().skip(1).fold(header, |mut acc, l| {
        acc.push_str(l);
        acc.push('\n');
        acc
    });
    ws.write_file("users.csv", body.as_bytes());
    let refused = sweep.run(&["plan"]);
    refused.assert_code(2);
    assert!(
        refused.stderr.contains("key\\nerror: fake\\u{1b}[2J"),
        "the error should name the columns, escaped\n{}",
        refused.dump()
    );
    sweep.finish();
}
