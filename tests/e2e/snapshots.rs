//! Snapshot tests (insta) of what the built `idsync` binary prints: golden plans of
//! small scenarios (text and JSON), the run summary of `sync`, `status`, `explain`
//! and `validate`.
//!
//! Everything that differs between runs or machines is redacted before the
//! comparison (see `Redactor`): times, durations, run ids, SCIM ids, temporary
//! paths, ports and the plan fingerprint. SCIM ids the test saw on the target are
//! replaced by a label naming the account they belonged to (`[user-id
//! ada@example.com]`), so a snapshot still shows which account an operation is
//! about, and that an email change keeps the same id.
//!
//! The snapshot files live in `tests/e2e/snapshots/` and are committed; with `CI`
//! set, insta fails on a missing or changed snapshot instead of writing one.
//! Review a change with `INSTA_UPDATE=always cargo test --test e2e snapshots`
//! and `git diff tests/e2e/snapshots/`.

use regex::Regex;
use serde_json::json;

use crate::harness::{
    Directory, Idsync, Output, ScimServer, UserRow, Workspace, fresh_token, operations, ops_of,
    str_at,
};

// ---------------------------------------------------------------------------
// Redaction

/// Replaces what varies between runs and machines with stable placeholders.
struct Redactor {
    /// Exact text → placeholder (paths, known SCIM ids); longest first.
    literals: Vec<(String, String)>,
}

impl Redactor {
    fn new(ws: &Workspace) -> Redactor {
        let mut r = Redactor {
            literals: Vec::new(),
        };
        let workspace = ws.path().to_path_buf();
        if let Ok(canonical) = workspace.canonicalize() {
            r.literal(&canonical.display().to_string(), "[workspace]");
        }
        r.literal(&workspace.display().to_string(), "[workspace]");
        r.literal(env!("CARGO_MANIFEST_DIR"), "[repo]");
        r
    }

    fn literal(&mut self, text: &str, placeholder: &str) {
        if text.is_empty() || self.literals.iter().any(|(t, _)| t == text) {
            return;
        }
        self.literals
            .push((text.to_owned(), placeholder.to_owned()));
        self.literals
            .sort_by_key(|(text, _)| std::cmp::Reverse(text.len()));
    }

    /// Labels every user and group now on the target that has no label yet, by
    /// its current userName / displayName (so an account keeps the label of the
    /// name it had when first seen).
    fn learn(&mut self, server: &ScimServer) {
        let contents = server.contents();
        for u in &contents.users {
            self.label(
                str_at(u, "id"),
                &format!("user-id {}", str_at(u, "userName")),
            );
        }
        for g in &contents.groups {
            self.label(
                str_at(g, "id"),
                &format!("group-id {}", str_at(g, "displayName")),
            );
        }
    }

    /// Labels `id` as `[name]`, or `[name (2)]`… when another id (an account
    /// deleted and created again) already has that label.
    fn label(&mut self, id: &str, name: &str) {
        if id.is_empty() || self.literals.iter().any(|(t, _)| t == id) {
            return;
        }
        let mut label = format!("[{name}]");
        let mut n = 1;
        while self.literals.iter().any(|(_, l)| *l == label) {
            n += 1;
            label = format!("[{name} ({n})]");
        }
        self.literal(id, &label);
    }

    fn apply(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (from, to) in &self.literals {
            out = out.replace(from.as_str(), to);
        }
        for (pattern, replacement) in rules() {
            out = pattern.replace_all(&out, *replacement).into_owned();
        }
        out
    }
}

/// The pattern-based redactions, applied after the literal ones.
fn rules() -> &'static [(Regex, &'static str)] {
    static RULES: std::sync::OnceLock<Vec<(Regex, &'static str)>> = std::sync::OnceLock::new();
    RULES.get_or_init(|| {
        [
            // RFC 3339 times (run history, log lines).
            (
                r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})",
                "[time]",
            ),
            // The run summary's "in 0.1s".
            (r"\bin \d+(\.\d+)?s\b", "in [duration]"),
            (r#""duration_ms": \d+"#, r#""duration_ms": "[duration]""#),
            // Log fields: timings, and request counters (retries depend on timing).
            (r"\b(\w+_ms|requests|retries|throttled)=\d+", "$1=[n]"),
            (
                r#""fingerprint": "[^"]*""#,
                r#""fingerprint": "[fingerprint]""#,
            ),
            (r"127\.0\.0\.1:\d+", "127.0.0.1:[port]"),
            // Run ids: `#3`, `run #3`, and `"id": 3` / `"run_id": 3` in status JSON.
            (r"#\d+\b", "#[run]"),
            (r#""(id|run_id)": \d+"#, r#""$1": "[run]""#),
            // SCIM ids the test did not see on the target.
            (
                r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b",
                "[uuid]",
            ),
            (r"\b[0-9a-f]{32}\b", "[scim-id]"),
        ]
        .into_iter()
        .map(|(p, r)| (Regex::new(p).expect("redaction regex"), r))
        .collect()
    })
}

// ---------------------------------------------------------------------------
// Helpers

/// Compares `text` with the committed snapshot `name`, with a description of
/// the scenario in the snapshot file's header.
fn snap(name: &str, description: &str, text: &str) {
    let mut settings = insta::Settings::clone_current();
    settings.set_description(description);
    settings.set_omit_expression(true);
    settings.bind(|| insta::assert_snapshot!(name, text));
}

/// The command (without `-c CONFIG`), its exit code, stdout and stderr.
fn transcript(out: &Output) -> String {
    format!("{}--- stderr ---\n{}", transcript_stdout(out), out.stderr)
}

/// The command (without `-c CONFIG`), its exit code and stdout.
fn transcript_stdout(out: &Output) -> String {
    let mut args = Vec::new();
    let mut skip = false;
    for a in &out.args {
        if skip {
            skip = false;
        } else if a == "-c" {
            skip = true;
        } else {
            args.push(a.as_str());
        }
    }
    format!(
        "$ idsync {}\nexit code: {}\n--- stdout ---\n{}",
        args.join(" "),
        out.code,
        out.stdout
    )
}

fn user(id: &str, email: &str, given: &str, family: &str, title: &str, dept: &str) -> UserRow {
    let mut u = UserRow::new(id, email, given, family);
    u.title = title.into();
    u.department = dept.into();
    u
}

/// Four people in two groups; Alan has no display name (so none is sent).
fn small_directory() -> Directory {
    let mut alan = user(
        "u3",
        "alan@example.com",
        "Alan",
        "Turing",
        "Analyst",
        "Finance",
    );
    alan.display_name.clear();
    let users = vec![
        user(
            "u1",
            "ada@example.com",
            "Ada",
            "Lovelace",
            "Engineer",
            "R&D",
        ),
        user(
            "u2",
            "grace@example.com",
            "Grace",
            "Hopper",
            "Manager",
            "R&D",
        ),
        alan,
        user(
            "u4",
            "edsger@example.com",
            "Edsger",
            "Dijkstra",
            "Engineer",
            "R&D",
        ),
    ];
    let mut groups = std::collections::BTreeMap::new();
    groups.insert(
        "engineering".to_owned(),
        vec!["u1".to_owned(), "u2".to_owned(), "u4".to_owned()],
    );
    groups.insert("finance".to_owned(), vec!["u3".to_owned()]);
    Directory { users, groups }
}

/// A server and a workspace on it with an empty state.
fn fresh(tag: &str) -> (ScimServer, Workspace) {
    let server = ScimServer::start(&fresh_token(tag));
    let ws = Workspace::new(&server);
    (server, ws)
}

/// Syncs `dir` (expected to exit 0) and labels what is now on the target.
fn sync_and_learn(server: &ScimServer, ws: &Workspace, dir: &Directory, r: &mut Redactor) {
    ws.write_directory(dir);
    ws.sync_ok();
    r.learn(server);
}

/// `plan` in text and JSON (both expected to exit 0), redacted, and the JSON
/// plan parsed.
fn plans(ws: &Workspace, r: &Redactor, full: bool) -> (String, String, serde_json::Value) {
    let mut text_args = vec!["plan"];
    let mut json_args = vec!["plan", "--format", "json"];
    if full {
        text_args.push("--full");
        json_args.push("--full");
    }
    let text = ws.run(&text_args);
    text.assert_code(0);
    let json = ws.run(&json_args);
    json.assert_code(0);
    (r.apply(&text.stdout), r.apply(&json.stdout), json.json())
}

/// groups.csv with a `group_id` column, so a group can be renamed under the same key.
fn groups_csv_with_ids(groups: &[(&str, &str, &[&str])]) -> String {
    let mut out = String::from("group_id,group,member\n");
    for (id, name, members) in groups {
        for m in *members {
            out.push_str(&format!("{id},{name},{m}\n"));
        }
    }
    out
}

/// The workspace's config with `text` replaced by `with` (which must occur).
fn config_with(ws: &Workspace, text: &str, with: &str) -> String {
    let config = ws.config_text();
    assert!(
        config.contains(text),
        "{text:?} not in the config:\n{config}"
    );
    config.replace(text, with)
}

/// `explain` of each of `who` (each expected to exit 0), redacted: stdout
/// only, as the log lines on stderr are not what is pinned.
fn explained(ws: &Workspace, r: &Redactor, who: &[&str]) -> String {
    let mut text = String::new();
    for who in who {
        let out = ws.run(&["explain", who]);
        out.assert_code(0);
        text.push_str(&transcript_stdout(&out));
        text.push('\n');
    }
    r.apply(&text)
}

fn assert_parses_as_json(text: &str) {
    serde_json::from_str::<serde_json::Value>(text)
        .unwrap_or_else(|e| panic!("not JSON after redaction ({e}):\n{text}"));
}

// ---------------------------------------------------------------------------
// Golden plans

#[test]
fn plan_for_an_empty_state_creates_every_user_group_and_membership() {
    let (_server, ws) = fresh("snap-create");
    let r = Redactor::new(&ws);
    ws.write_directory(&small_directory());
    let (text, json, plan) = plans(&ws, &r, false);
    assert_eq!(ops_of(&plan, "create_user").len(), 4, "{plan}");
    assert_parses_as_json(&json);
    snap(
        "plan_create_text",
        "plan (text), empty state: 4 users (u3 without displayName), groups engineering (u1, u2, u4) and finance (u3)",
        &text,
    );
    snap(
        "plan_create_json",
        "plan --format json, empty state: 4 users (u3 without displayName), groups engineering (u1, u2, u4) and finance (u3)",
        &json,
    );
}

#[test]
fn plan_for_a_title_change_is_one_update_with_old_and_new_value() {
    let (server, ws) = fresh("snap-update");
    let mut r = Redactor::new(&ws);
    let mut dir = small_directory();
    sync_and_learn(&server, &ws, &dir, &mut r);
    dir.user_mut("u2").title = "Rear Admiral".into();
    ws.write_directory(&dir);
    let (text, json, plan) = plans(&ws, &r, false);
    assert_eq!(operations(&plan).len(), 1, "{plan}");
    snap(
        "plan_update_text",
        "plan (text) after u2's title changed from Manager to Rear Admiral",
        &text,
    );
    snap(
        "plan_update_json",
        "plan --format json after u2's title changed from Manager to Rear Admiral",
        &json,
    );
}

#[test]
fn plan_for_an_email_change_is_an_update_of_the_same_id() {
    let (server, ws) = fresh("snap-email");
    let mut r = Redactor::new(&ws);
    let mut dir = small_directory();
    sync_and_learn(&server, &ws, &dir, &mut r);
    let id_before = server.contents().user_id("grace@example.com");
    dir.user_mut("u2").email = "grace.hopper@example.com".into();
    ws.write_directory(&dir);
    let (text, json, plan) = plans(&ws, &r, false);
    let updates = ops_of(&plan, "update_user");
    assert_eq!(operations(&plan).len(), 1, "{plan}");
    assert_eq!(updates[0]["scim_id"], json!(id_before), "{plan}");
    assert!(
        json.contains("[user-id grace@example.com]"),
        "the update should name the old account's id:\n{json}"
    );
    snap(
        "plan_email_change_text",
        "plan (text) after u2's email changed from grace@ to grace.hopper@example.com",
        &text,
    );
    snap(
        "plan_email_change_json",
        "plan --format json after u2's email changed: an update_user of the SCIM id grace@example.com had",
        &json,
    );
}

#[test]
fn plan_for_a_leaver_under_remove_action_disable_disables_and_drops_memberships() {
    let (server, ws) = fresh("snap-disable");
    let mut r = Redactor::new(&ws);
    let mut dir = small_directory();
    sync_and_learn(&server, &ws, &dir, &mut r);
    dir.remove_user("u4");
    ws.write_directory(&dir);
    let (text, json, plan) = plans(&ws, &r, false);
    assert_eq!(ops_of(&plan, "disable_user").len(), 1, "{plan}");
    snap(
        "plan_disable_text",
        "plan (text), remove_action disable, after u4 (edsger@, member of engineering) left the source",
        &text,
    );
    snap(
        "plan_disable_json",
        "plan --format json, remove_action disable, after u4 (edsger@, member of engineering) left the source",
        &json,
    );
}

#[test]
fn plan_for_a_leaver_under_remove_action_delete_deletes() {
    let (server, mut ws) = fresh("snap-delete");
    ws.remove_action = "delete".into();
    let mut r = Redactor::new(&ws);
    let mut dir = small_directory();
    sync_and_learn(&server, &ws, &dir, &mut r);
    dir.remove_user("u4");
    ws.write_directory(&dir);
    let (text, json, plan) = plans(&ws, &r, false);
    assert_eq!(ops_of(&plan, "delete_user").len(), 1, "{plan}");
    snap(
        "plan_delete_text",
        "plan (text), remove_action delete, after u4 (edsger@, member of engineering) left the source",
        &text,
    );
    snap(
        "plan_delete_json",
        "plan --format json, remove_action delete, after u4 (edsger@, member of engineering) left the source",
        &json,
    );
}

#[test]
fn plan_for_a_disabled_user_who_comes_back_reenables_the_same_id() {
    let (server, ws) = fresh("snap-enable");
    let mut r = Redactor::new(&ws);
    let full = small_directory();
    sync_and_learn(&server, &ws, &full, &mut r);
    let mut dir = full.clone();
    dir.remove_user("u4");
    sync_and_learn(&server, &ws, &dir, &mut r);
    let id = server.contents().user_id("edsger@example.com");
    ws.write_directory(&full);
    let (text, json, plan) = plans(&ws, &r, false);
    let enables = ops_of(&plan, "enable_user");
    assert_eq!(enables.len(), 1, "{plan}");
    assert!(ops_of(&plan, "create_user").is_empty(), "{plan}");
    assert_eq!(enables[0]["scim_id"], json!(id), "{plan}");
    snap(
        "plan_reenable_text",
        "plan (text) after u4 (edsger@), disabled when it left the source, came back",
        &text,
    );
    snap(
        "plan_reenable_json",
        "plan --format json after u4 (edsger@), disabled when it left the source, came back",
        &json,
    );
}

/// A directory whose groups.csv keys groups by `group_id` (g1 Engineering, g2
/// Finance), synced; then g1 renamed to "Platform Engineering".
fn renamed_group(tag: &str, on_rename: &str) -> (String, String, serde_json::Value) {
    let (server, mut ws) = fresh(tag);
    ws.raw_config = Some(config_with(
        &ws,
        "delete: true }",
        &format!("delete: true, on_rename: {on_rename} }}"),
    ));
    let mut r = Redactor::new(&ws);
    let dir = small_directory();
    ws.write_directory(&dir);
    let groups = |g1: &str| {
        groups_csv_with_ids(&[("g1", g1, &["u1", "u2", "u4"]), ("g2", "Finance", &["u3"])])
    };
    ws.write_file("groups.csv", groups("Engineering").as_bytes());
    ws.sync_ok();
    r.learn(&server);
    ws.write_file("groups.csv", groups("Platform Engineering").as_bytes());
    plans(&ws, &r, false)
}

#[test]
fn plan_for_a_group_rename_with_on_rename_keep_renames_in_place() {
    let (text, json, plan) = renamed_group("snap-rename-keep", "keep");
    assert_eq!(operations(&plan).len(), 1, "{plan}");
    assert_eq!(ops_of(&plan, "update_group").len(), 1, "{plan}");
    snap(
        "plan_group_rename_keep_text",
        "plan (text), groups.on_rename keep, generic SCIM target: group g1 renamed Engineering -> Platform Engineering",
        &text,
    );
    snap(
        "plan_group_rename_keep_json",
        "plan --format json, groups.on_rename keep, generic SCIM target: group g1 renamed Engineering -> Platform Engineering",
        &json,
    );
}

#[test]
fn plan_for_a_group_rename_with_on_rename_recreate_creates_fills_and_deletes() {
    let (text, json, plan) = renamed_group("snap-rename-recreate", "recreate");
    assert_eq!(ops_of(&plan, "create_group").len(), 1, "{plan}");
    assert_eq!(ops_of(&plan, "delete_group").len(), 1, "{plan}");
    snap(
        "plan_group_rename_recreate_text",
        "plan (text), groups.on_rename recreate: group g1 renamed Engineering -> Platform Engineering",
        &text,
    );
    snap(
        "plan_group_rename_recreate_json",
        "plan --format json, groups.on_rename recreate: group g1 renamed Engineering -> Platform Engineering",
        &json,
    );
}

#[test]
fn sync_above_max_removals_stops_with_exit_3_and_lists_what_it_held_back() {
    let (server, mut ws) = fresh("snap-guard");
    let mut r = Redactor::new(&ws);
    let mut dir = small_directory();
    dir.users.push(user(
        "u5",
        "barbara@example.com",
        "Barbara",
        "Liskov",
        "Engineer",
        "R&D",
    ));
    dir.groups
        .get_mut("engineering")
        .expect("engineering")
        .push("u5".into());
    sync_and_learn(&server, &ws, &dir, &mut r);
    let before = server.contents().normalized();

    ws.max_removals = "2".into();
    for key in ["u2", "u3", "u5"] {
        dir.remove_user(key);
    }
    ws.write_directory(&dir);
    let text = ws.run(&["sync"]);
    text.assert_code(3);
    let json = ws.run(&["sync", "--format", "json"]);
    json.assert_code(3);
    assert_eq!(
        server.contents().normalized(),
        before,
        "the guard let changes through"
    );
    snap(
        "sync_guard_stop_text",
        "sync with max_removals 2 after 3 of 5 users left (remove_action disable): exit code, stdout, stderr",
        &r.apply(&transcript(&text)),
    );
    snap(
        "sync_guard_stop_json",
        "sync --format json with max_removals 2 after 3 of 5 users left (remove_action disable): exit code, stdout, stderr",
        &r.apply(&transcript(&json)),
    );
}

#[test]
fn full_plan_recreates_a_user_deleted_by_hand_reverts_hand_edits_and_adopts_a_match() {
    let (server, ws) = fresh("snap-full");
    let mut r = Redactor::new(&ws);
    let mut dir = small_directory();
    sync_and_learn(&server, &ws, &dir, &mut r);
    let contents = server.contents();

    // Drift by hand: Ada's title changed, Alan deleted (and, as real targets do,
    // dropped from his group; scim2-server keeps a deleted member otherwise).
    server.patch_user_title(&contents.user_id("ada@example.com"), "Changed by hand");
    let alan = contents.user_id("alan@example.com");
    server.remove_group_member(&contents.group_id("finance"), &alan);
    server.delete_user(&alan);
    // An account made by hand for a new hire who is now also in the source
    // (to adopt), and a stranger not in the source (to leave alone).
    server.create_user(json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "barbara@example.com",
        "title": "Made by hand",
        "active": true,
    }));
    server.create_user(json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "stranger@example.com",
        "active": true,
    }));
    r.learn(&server);
    dir.users.push(user(
        "u5",
        "barbara@example.com",
        "Barbara",
        "Liskov",
        "Engineer",
        "R&D",
    ));
    ws.write_directory(&dir);

    let (text, json, plan) = plans(&ws, &r, true);
    assert_eq!(ops_of(&plan, "adopt_user").len(), 1, "{plan}");
    assert!(!json.contains("stranger@example.com"), "{json}");
    assert_parses_as_json(&json);
    snap(
        "plan_full_reconcile_text",
        "plan --full (text) after drift by hand: ada@'s title changed, alan@ deleted, barbara@ created by hand and added to the source as u5, stranger@ created by hand (not in the source)",
        &text,
    );
    snap(
        "plan_full_reconcile_json",
        "plan --full --format json after drift by hand: ada@'s title changed, alan@ deleted, barbara@ created by hand and added to the source as u5, stranger@ created by hand (not in the source)",
        &json,
    );
}

// ---------------------------------------------------------------------------
// sync's run summary

#[test]
fn sync_summary_text_of_a_first_sync() {
    let (_server, ws) = fresh("snap-sum-text");
    let r = Redactor::new(&ws);
    ws.write_directory(&small_directory());
    let out = ws.run(&["sync"]);
    out.assert_code(0);
    snap(
        "sync_summary_text",
        "sync (text) of small_directory into an empty target: stdout",
        &r.apply(&out.stdout),
    );
}

#[test]
fn sync_summary_json_of_a_first_sync() {
    let (_server, ws) = fresh("snap-sum-json");
    let r = Redactor::new(&ws);
    ws.write_directory(&small_directory());
    let out = ws.run(&["sync", "--format", "json"]);
    out.assert_code(0);
    let summary = out.json();
    assert_eq!(summary["applied"], json!(8), "{summary}");
    let redacted = r.apply(&out.stdout);
    assert_parses_as_json(&redacted);
    snap(
        "sync_summary_json",
        "sync --format json of small_directory into an empty target: stdout",
        &redacted,
    );
}

// ---------------------------------------------------------------------------
// status (with a guard stop and failed operations in the history)

#[test]
fn status_after_a_sync_a_guard_stop_and_two_runs_with_a_failure() {
    let (server, mut ws) = fresh("snap-status");
    let mut r = Redactor::new(&ws);
    let mut dir = small_directory();
    // Run 1: the first sync.
    sync_and_learn(&server, &ws, &dir, &mut r);

    // Run 2: stopped by the removal guard (3 leavers, at most 1 removal).
    ws.max_removals = "1".into();
    let mut leavers = dir.clone();
    for key in ["u2", "u3", "u4"] {
        leavers.remove_user(key);
    }
    ws.write_directory(&leavers);
    ws.run(&["sync"]).assert_code(3);

    // Run 3: Alan was deleted by hand; his title change then fails with 404.
    let contents = server.contents();
    let alan = contents.user_id("alan@example.com");
    server.remove_group_member(&contents.group_id("finance"), &alan);
    server.delete_user(&alan);
    dir.user_mut("u3").title = "Senior Analyst".into();
    ws.write_directory(&dir);
    let text = ws.run(&["sync"]);
    text.assert_code(1);

    // Run 4: Alan is created again; Grace, deleted by hand meanwhile, fails the same way.
    let grace = contents.user_id("grace@example.com");
    server.remove_group_member(&contents.group_id("engineering"), &grace);
    server.delete_user(&grace);
    dir.user_mut("u2").title = "Rear Admiral".into();
    ws.write_directory(&dir);
    let json_out = ws.run(&["sync", "--format", "json"]);
    json_out.assert_code(1);
    r.learn(&server);

    snap(
        "sync_summary_text_with_a_failure",
        "sync (text) whose only operation, an update of alan@ (deleted by hand), failed with 404: stdout",
        &r.apply(&text.stdout),
    );
    let redacted = r.apply(&json_out.stdout);
    assert_parses_as_json(&redacted);
    snap(
        "sync_summary_json_with_a_failure",
        "sync --format json recreating alan@ (applied) while the update of grace@ (deleted by hand) failed with 404: stdout",
        &redacted,
    );

    let status_text = ws.run(&["status"]);
    status_text.assert_code(0);
    let status_json = ws.run(&["status", "--format", "json"]);
    status_json.assert_code(0);
    let value = status_json.json();
    assert_eq!(value["runs"].as_array().map(Vec::len), Some(4), "{value}");
    snap(
        "status_text",
        "status (text) after run 1 (first sync), run 2 (guard stop), run 3 (a 404 failure), run 4 (one create, one 404 failure): stdout",
        &r.apply(&status_text.stdout),
    );
    let redacted = r.apply(&status_json.stdout);
    assert_parses_as_json(&redacted);
    snap(
        "status_json",
        "status --format json after run 1 (first sync), run 2 (guard stop), run 3 (a 404 failure), run 4 (one create, one 404 failure): stdout",
        &redacted,
    );
}

#[test]
fn status_before_the_first_run() {
    let (_server, ws) = fresh("snap-status-none");
    let r = Redactor::new(&ws);
    ws.write_directory(&small_directory());
    let text = ws.run(&["status"]);
    text.assert_code(0);
    let json_out = ws.run(&["status", "--format", "json"]);
    json_out.assert_code(0);
    json_out.json();
    snap(
        "status_before_the_first_run",
        "status, then status --format json, with no state DB yet: stdout",
        &r.apply(&format!("{}{}", text.stdout, json_out.stdout)),
    );
}

// ---------------------------------------------------------------------------
// explain

#[test]
fn explain_an_in_scope_user_an_out_of_scope_user_a_leaver_and_an_unknown_one() {
    let (server, mut ws) = fresh("snap-explain");
    // The default CSV mapping plus a scope: contractors are not provisioned.
    let mapping = std::fs::read_to_string(Workspace::mapping_path()).expect("read csv mapping");
    let required = "  required: [userName, emails]\n";
    assert!(mapping.contains(required), "{mapping}");
    let mapping = mapping.replace(
        required,
        &format!(
            "{required}  scope:\n    exclude:\n      - {{ attribute: department, equals: Contractors }}\n"
        ),
    );
    ws.write_file("mapping.yaml", mapping.as_bytes());
    let mapping_line = format!("mapping: {}", Workspace::mapping_path().display());
    ws.raw_config = Some(config_with(&ws, &mapping_line, "mapping: mapping.yaml"));

    let mut r = Redactor::new(&ws);
    let mut dir = small_directory();
    dir.users.push(user(
        "u9",
        "contractor@example.com",
        "Con",
        "Tractor",
        "Consultant",
        "Contractors",
    ));
    sync_and_learn(&server, &ws, &dir, &mut r);
    // Edsger leaves and is disabled.
    dir.remove_user("u4");
    sync_and_learn(&server, &ws, &dir, &mut r);
    assert!(
        server
            .contents()
            .users_named("contractor@example.com")
            .is_empty()
    );
    // Pending for the next cycle: Ada's new title, and Ada into finance.
    dir.user_mut("u1").title = "Principal Engineer".into();
    dir.groups
        .get_mut("finance")
        .expect("finance")
        .push("u1".into());
    ws.write_directory(&dir);

    let text = explained(
        &ws,
        &r,
        &[
            "ada@example.com",
            "u9",
            "edsger@example.com",
            "nobody@example.com",
        ],
    );
    snap(
        "explain",
        "explain for ada@ (in scope, provisioned; her title changed and she joined finance since the last sync), u9 (department Contractors, out of scope), edsger@ (left the source, disabled) and nobody@ (unknown); mapping = mappings/csv.yaml + scope exclude department Contractors",
        &text,
    );
}

/// small_directory plus u9, a contractor in no group, assigned by the config.
fn assigned_directory() -> Directory {
    let mut dir = small_directory();
    dir.users.push(user(
        "u9",
        "contractor@example.com",
        "Con",
        "Tractor",
        "Consultant",
        "Contractors",
    ));
    dir
}

#[test]
fn plan_when_a_group_and_a_user_are_no_longer_assigned() {
    let (server, mut ws) = fresh("snap-assign-plan");
    let mut r = Redactor::new(&ws);
    ws.extra_config = "assign:\n  groups: [engineering, finance]\n  users: [u9]\n".into();
    sync_and_learn(&server, &ws, &assigned_directory(), &mut r);
    // finance (Alan's only group) and Con are taken out of `assign`.
    ws.extra_config = "assign:\n  groups: [engineering]\n".into();
    let (text, json, plan) = plans(&ws, &r, false);
    assert_eq!(ops_of(&plan, "delete_group").len(), 1, "{plan}");
    assert_eq!(ops_of(&plan, "disable_user").len(), 2, "{plan}");
    assert_parses_as_json(&json);
    let description = "small directory + u9 synced with assign { groups: [engineering, finance], users: [u9] }; then assign { groups: [engineering] }: finance leaves (groups.delete on), Alan (only in finance) and u9 are disabled";
    snap("plan_unassigned_text", description, &text);
    snap("plan_unassigned_json", description, &json);
}

#[test]
fn explain_names_the_assignment_that_put_a_user_in_scope_or_its_absence() {
    let (server, mut ws) = fresh("snap-assign-explain");
    let mut r = Redactor::new(&ws);
    ws.extra_config =
        "assign:\n  groups: [Engineering]\n  users: [CONTRACTOR@example.com]\n".into();
    sync_and_learn(&server, &ws, &assigned_directory(), &mut r);
    let text = explained(
        &ws,
        &r,
        &[
            "ada@example.com",
            "contractor@example.com",
            "alan@example.com",
        ],
    );
    for says in [
        "Scope: in scope: assigned through group \"engineering\"",
        "Scope: in scope: assigned directly (assign.users)",
        "Scope: out of scope: not assigned",
    ] {
        assert!(text.contains(says), "{says}:\n{text}");
    }
    snap(
        "explain_assigned",
        "explain with assign { groups: [Engineering], users: [CONTRACTOR@example.com] } for ada@ (in engineering), contractor@ (named by userName) and alan@ (only in finance, not assigned)",
        &text,
    );
}

// ---------------------------------------------------------------------------
// validate

#[test]
fn validate_output_for_a_good_config_and_for_an_unknown_key() {
    let mut ws = Workspace::with_target("http://127.0.0.1:9/v2", &fresh_token("snap-validate"));
    let r = Redactor::new(&ws);
    ws.write_directory(&small_directory());
    let good = ws.run(&["validate"]);
    good.assert_code(0);

    let config = ws.config_text();
    ws.raw_config = Some(config.replace("  timeout: 10s\n", "  timeout: 10s\n  tokn_env: OOPS\n"));
    assert_ne!(ws.raw_config.as_deref(), Some(config.as_str()));
    let bad = ws.run(&["validate"]);
    bad.assert_code(2);

    snap(
        "validate",
        "validate of the harness's generated config, then of the same config with an unknown key `tokn_env` under target (line 10)",
        &r.apply(&format!("{}\n{}", transcript(&good), transcript(&bad))),
    );
}

// ---------------------------------------------------------------------------
// log (the provisioning log)

#[test]
fn log_of_a_first_sync_a_guard_stop_and_a_failed_update_in_text_json_and_csv() {
    let (server, mut ws) = fresh("snap-log");
    let r = Redactor::new(&ws);
    let mut dir = small_directory();
    // Run 1: the first sync.
    ws.write_directory(&dir);
    ws.sync_ok();
    // Run 2: stopped by the removal guard; no operations.
    ws.max_removals = "1".into();
    let mut leavers = dir.clone();
    for key in ["u2", "u3", "u4"] {
        leavers.remove_user(key);
    }
    ws.write_directory(&leavers);
    ws.run(&["sync"]).assert_code(3);
    // Run 3: Alan was deleted by hand; his title change fails with 404.
    let contents = server.contents();
    let alan = contents.user_id("alan@example.com");
    server.remove_group_member(&contents.group_id("finance"), &alan);
    server.delete_user(&alan);
    dir.user_mut("u3").title = "Senior Analyst".into();
    ws.write_directory(&dir);
    ws.run(&["sync"]).assert_code(1);

    let text = ws.run(&["log"]);
    text.assert_code(0);
    assert!(
        text.stdout
            .contains("update_user    failed   404  u3 (alan@example.com)"),
        "{}",
        text.stdout
    );
    snap(
        "log_text",
        "log (text) after run 1 (first sync: 4 users, 2 groups, members), run 2 (guard stop, no operations), run 3 (update of alan@, deleted by hand, failed with 404): stdout",
        &r.apply(&text.stdout),
    );
    let json = ws.run(&["log", "--format", "json"]);
    json.assert_code(0);
    let value = json.json();
    let records = value.as_array().expect("an array");
    assert_eq!(
        records.iter().filter(|r| r["outcome"] == "failed").count(),
        1,
        "{value}"
    );
    let redacted = r.apply(&json.stdout);
    assert_parses_as_json(&redacted);
    snap(
        "log_json",
        "log --format json, same runs as log_text: stdout",
        &redacted,
    );
    let csv_out = ws.run(&["log", "--format", "csv"]);
    csv_out.assert_code(0);
    let rows: Vec<csv::StringRecord> = csv::Reader::from_reader(csv_out.stdout.as_bytes())
        .records()
        .map(|r| r.expect("valid CSV"))
        .collect();
    assert_eq!(rows.len(), records.len());
    snap(
        "log_csv",
        "log --format csv, same runs as log_text: stdout",
        &r.apply(&csv_out.stdout),
    );
    let filtered = ws.run(&["log", "--user", "ALAN@example.com", "--outcome", "failed"]);
    filtered.assert_code(0);
    let by_action = ws.run(&["log", "--run", "1", "--action", "create_group,add_members"]);
    by_action.assert_code(0);
    let unknown = ws.run(&["log", "--action", "create_users"]);
    unknown.assert_code(2);
    snap(
        "log_filtered",
        "log --user ALAN@example.com --outcome failed; log --run 1 --action create_group,add_members; log --action create_users (unknown: exit 2)",
        &r.apply(&format!(
            "{}\n{}\n{}",
            transcript(&filtered),
            transcript(&by_action),
            transcript(&unknown)
        )),
    );
}

// ---------------------------------------------------------------------------
// sync --only

/// Whether the target holds `user_name` as active.
fn active_on_target(server: &ScimServer, user_name: &str) -> bool {
    server.contents().user(user_name)["active"] != serde_json::Value::Bool(false)
}

#[test]
fn sync_only_applies_just_the_named_users_and_their_memberships() {
    let (server, ws) = fresh("snap-only");
    let mut r = Redactor::new(&ws);
    let mut dir = small_directory();
    sync_and_learn(&server, &ws, &dir, &mut r);
    // Pending for others: Ada's title, Edsger left; and a newcomer, Barbara,
    // in engineering and in a new group `ops` beside Ada.
    dir.user_mut("u1").title = "Principal Engineer".into();
    dir.remove_user("u4");
    dir.users.push(user(
        "u5",
        "barbara@example.com",
        "Barbara",
        "Liskov",
        "Engineer",
        "R&D",
    ));
    dir.groups
        .get_mut("engineering")
        .expect("engineering")
        .push("u5".into());
    dir.groups
        .insert("ops".into(), vec!["u1".into(), "u5".into()]);
    ws.write_directory(&dir);

    let dry = ws.run(&["sync", "--only", "barbara@example.com", "--dry-run"]);
    dry.assert_code(0);
    let applied = ws.run(&["sync", "--only", "u5"]);
    applied.assert_code(0);
    r.learn(&server);
    let contents = server.contents();
    assert_eq!(
        str_at(contents.user("ada@example.com"), "title"),
        "Engineer"
    );
    assert!(active_on_target(&server, "edsger@example.com"));
    assert!(active_on_target(&server, "barbara@example.com"));
    let ops = contents.group("ops").expect("ops was created for Barbara");
    assert_eq!(ops["members"].as_array().map(Vec::len), Some(1), "{ops}");

    let unknown = ws.run(&["sync", "--only", "nobody@example.com"]);
    unknown.assert_code(2);
    assert!(
        unknown.stderr.contains("\"nobody@example.com\""),
        "{}",
        unknown.stderr
    );

    // A leaver is removed (remove_action disable) only when named.
    let leaver = ws.run(&["sync", "--only", "edsger@example.com"]);
    leaver.assert_code(0);
    assert!(!active_on_target(&server, "edsger@example.com"));

    // What is left for the next normal cycle: Ada's update and her membership.
    let (rest, _, plan) = plans(&ws, &r, false);
    assert_eq!(operations(&plan).len(), 2, "{plan}");

    let text = r.apply(&format!(
        "{}\n{}\n{}\n{}\n$ idsync plan\n{rest}",
        transcript_stdout(&dry),
        transcript_stdout(&applied),
        transcript(&unknown),
        transcript_stdout(&leaver),
    ));
    snap(
        "sync_only",
        "sync --only after Ada's title changed, Edsger left and Barbara (u5) joined engineering and a new group ops beside Ada: a dry run and a run for Barbara, an unknown user, a run for the leaver Edsger, then the plan of what is left",
        &text,
    );
}

// ---------------------------------------------------------------------------
// revert

/// The id of the newest run in the history.
fn last_run_id(ws: &Workspace) -> String {
    let status = ws.run(&["status", "--format", "json"]);
    status.assert_code(0);
    status.json()["runs"][0]["id"]
        .as_i64()
        .expect("a run in the history")
        .to_string()
}

#[test]
fn revert_of_a_run_that_disabled_changed_and_removed_members_restores_the_target_exactly() {
    let (server, ws) = fresh("snap-revert");
    let mut r = Redactor::new(&ws);
    let mut dir = small_directory();
    sync_and_learn(&server, &ws, &dir, &mut r);
    let before = server.contents().normalized();

    // The run to revert: Grace's title changes, Edsger leaves
    // (disabled, out of engineering), Alan is taken out of finance.
    dir.user_mut("u2").title = "Rear Admiral".into();
    dir.remove_user("u4");
    dir.groups.insert("finance".into(), Vec::new());
    sync_and_learn(&server, &ws, &dir, &mut r);
    let run = last_run_id(&ws);
    assert_ne!(server.contents().normalized(), before);

    let shown = ws.run(&["revert", &run]);
    shown.assert_code(0);
    let saved = ws.run(&["revert", &run, "--out", "revert.json", "--format", "json"]);
    saved.assert_code(0);
    let plan = saved.json();
    let applied = ws.run(&["sync", "--plan", "revert.json"]);
    applied.assert_code(0);
    assert_eq!(
        server.contents().normalized(),
        before,
        "the revert did not restore the target as it was before run {run}"
    );
    // The source still says otherwise: the next cycle applies it again.
    let (again, _, next) = plans(&ws, &r, false);
    assert_eq!(operations(&next).len(), operations(&plan).len(), "{next}");

    let text = r.apply(&format!(
        "{}\n{}\n$ idsync plan\n{again}",
        transcript_stdout(&shown),
        transcript_stdout(&applied)
    ));
    snap(
        "revert",
        "revert of the run that changed Grace's title, disabled Edsger (out of engineering) and emptied finance; applied with sync --plan; then the plan of the next cycle, which applies the source again",
        &text,
    );
}

#[test]
fn revert_recreates_deleted_users_and_groups_with_their_members() {
    let (server, mut ws) = fresh("snap-revert-delete");
    ws.remove_action = "delete".into();
    ws.groups_delete = true;
    let mut r = Redactor::new(&ws);
    let mut dir = small_directory();
    sync_and_learn(&server, &ws, &dir, &mut r);
    let names = |c: &crate::harness::TargetContents| {
        let mut users: Vec<(String, String, Vec<String>)> = c
            .users
            .iter()
            .map(|u| {
                (
                    str_at(u, "userName").to_owned(),
                    str_at(u, "title").to_owned(),
                    Vec::new(),
                )
            })
            .collect();
        users.sort();
        let mut groups: Vec<(String, Vec<String>)> = c
            .groups
            .iter()
            .map(|g| {
                let mut members: Vec<String> = g["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| {
                        let id = str_at(m, "value");
                        c.users
                            .iter()
                            .find(|u| str_at(u, "id") == id)
                            .map(|u| str_at(u, "userName").to_owned())
                            .unwrap_or_default()
                    })
                    .collect();
                members.sort();
                (str_at(g, "displayName").to_owned(), members)
            })
            .collect();
        groups.sort();
        (users, groups)
    };
    let before = names(&server.contents());

    dir.remove_user("u3");
    dir.groups.remove("finance");
    ws.write_directory(&dir);
    ws.run(&["sync", "--allow-deletes"]).assert_code(0);
    let run = last_run_id(&ws);
    assert!(server.contents().users_named("alan@example.com").is_empty());

    let saved = ws.run(&["revert", &run, "--out", "revert.json"]);
    saved.assert_code(0);
    assert!(saved.stdout.contains("new SCIM ids"), "{}", saved.stdout);
    ws.run(&["sync", "--plan", "revert.json"]).assert_code(0);
    assert_eq!(names(&server.contents()), before);
}

#[test]
fn plan_for_two_users_swapping_addresses_passes_through_a_temporary_name() {
    let (server, ws) = fresh("snap-swap");
    let mut r = Redactor::new(&ws);
    let mut dir = small_directory();
    sync_and_learn(&server, &ws, &dir, &mut r);
    dir.user_mut("u1").email = "grace@example.com".into();
    dir.user_mut("u2").email = "ada@example.com".into();
    ws.write_directory(&dir);
    let (text, _, plan) = plans(&ws, &r, false);
    assert_eq!(ops_of(&plan, "update_user").len(), 3, "{plan}");
    snap(
        "plan_swap_text",
        "plan (text) after u1 (ada@) and u2 (grace@) swapped email addresses: u1 passes through a temporary userName",
        &text,
    );
}

#[test]
fn plan_for_a_leavers_address_given_to_a_new_hire_shows_the_reuse_decision() {
    let (server, ws) = fresh("snap-reuse");
    let mut r = Redactor::new(&ws);
    let mut dir = small_directory();
    sync_and_learn(&server, &ws, &dir, &mut r);
    dir.remove_user("u4");
    dir.users.push(user(
        "u5",
        "edsger@example.com",
        "Edna",
        "Dijkstra",
        "Intern",
        "R&D",
    ));
    dir.groups
        .get_mut("finance")
        .expect("finance")
        .push("u5".into());
    ws.write_directory(&dir);
    let (never, _, plan) = plans(&ws, &r, false);
    assert_eq!(
        ops_of(&plan, "create_user")[0]["name_step"]["step"],
        "refused",
        "{plan}"
    );
    let mut after = Workspace::new(&server);
    after.raw_config = Some(config_with(
        &ws,
        "policy:\n",
        "policy:\n  reuse_accounts: after_removal\n",
    ));
    after.write_directory(&dir);
    std::fs::copy(ws.state_db(), after.state_db()).expect("copy the state");
    let r_after = {
        let mut r2 = Redactor::new(&after);
        r2.learn(&server);
        r2
    };
    let (takeover, _, plan) = plans(&after, &r_after, false);
    assert_eq!(
        ops_of(&plan, "create_user")[0]["name_step"]["step"],
        "takes_over",
        "{plan}"
    );
    snap(
        "plan_reuse_never_text",
        "plan (text), remove_action disable, reuse_accounts never: u4 (edsger@) left and new hire u5 has edsger@example.com",
        &never,
    );
    snap(
        "plan_reuse_after_removal_text",
        "plan (text), remove_action disable, reuse_accounts after_removal: u4 (edsger@) left and new hire u5 has edsger@example.com",
        &takeover,
    );
}

// ---------------------------------------------------------------------------
// `check`: what idsync learned of the target

/// `check`, redacted (the source's read time too).
fn check_transcript(ws: &Workspace) -> String {
    let out = ws.run(&["check"]);
    let text = Redactor::new(ws).apply(&transcript_stdout(&out));
    Regex::new(r"\(\d+\.\d+s\)")
        .expect("regex")
        .replace_all(&text, "([duration])")
        .into_owned()
}

#[test]
fn check_against_scim2_server_says_paging_filter_patch_and_schema_notes() {
    let (_server, ws) = fresh("check");
    ws.write_directory(&small_directory());
    snap(
        "check_scim2_server",
        "check against a plain scim2-server: its capabilities, the page size in force, and what its /Schemas means for the default CSV mapping",
        &check_transcript(&ws),
    );
}

#[test]
fn check_against_a_quirky_schema_names_what_the_target_drops_refuses_and_requires() {
    use crate::quirks_schema::{
        ExternalIdReadOnly, GroupMembersRequired, RefusesEmailTypeAndPrimary, UserNameImmutable,
    };
    let server = ScimServer::start(&fresh_token("check-quirks"));
    let proxy = crate::proxy::FaultProxy::start(server.port(), crate::proxy::pass_through());
    proxy.set_quirks(vec![
        std::sync::Arc::new(RefusesEmailTypeAndPrimary),
        std::sync::Arc::new(ExternalIdReadOnly),
        std::sync::Arc::new(UserNameImmutable),
        std::sync::Arc::new(GroupMembersRequired),
    ]);
    let ws = Workspace::with_target(&proxy.base_url(), server.token());
    ws.write_directory(&small_directory());
    snap(
        "check_quirky_schema",
        "check against a server whose /Schemas publishes emails without type and primary, externalId read-only, userName immutable, and Group members required",
        &check_transcript(&ws),
    );
}

// ---------------------------------------------------------------------------
// The controls: actions switched off, provisioning paused, a held cycle

#[test]
fn plan_sync_and_log_with_actions_switched_off_show_what_was_skipped() {
    let (server, mut ws) = fresh("snap-actions-off");
    let mut r = Redactor::new(&ws);
    let mut dir = small_directory();
    sync_and_learn(&server, &ws, &dir, &mut r);
    // u4 leaves, u5 joins engineering, u1's title changes: only the update
    // is sent.
    dir.remove_user("u4");
    dir.users.push(user(
        "u5",
        "barbara@example.com",
        "Barbara",
        "Liskov",
        "Engineer",
        "R&D",
    ));
    dir.groups
        .get_mut("engineering")
        .expect("engineering")
        .push("u5".into());
    dir.user_mut("u1").title = "Rear Admiral".into();
    ws.write_directory(&dir);
    ws.raw_config = Some(config_with(
        &ws,
        "policy:\n",
        "policy:\n  actions: { users: { create: false, disable: false } }\n",
    ));
    let (text, json, plan) = plans(&ws, &r, false);
    assert_eq!(operations(&plan).len(), 1, "{plan}");
    assert_eq!(plan["skipped"].as_array().map(Vec::len), Some(4), "{plan}");
    assert_parses_as_json(&json);
    let scenario = "after u4 (edsger@) left, u5 (barbara@) joined engineering and u1's title changed, with policy.actions.users.create and .disable false";
    snap(
        "plan_actions_off_text",
        &format!("plan (text) {scenario}"),
        &text,
    );
    snap(
        "plan_actions_off_json",
        &format!("plan --format json {scenario}"),
        &json,
    );
    let sync = ws.run(&["sync"]);
    sync.assert_code(0);
    assert!(
        server
            .contents()
            .users_named("barbara@example.com")
            .is_empty()
    );
    let log = ws.run(&["log", "--outcome", "skipped"]);
    log.assert_code(0);
    snap(
        "sync_and_log_actions_off",
        &format!("sync (text) {scenario}, then log --outcome skipped"),
        &r.apply(&format!(
            "{}\n{}",
            transcript_stdout(&sync),
            transcript_stdout(&log)
        )),
    );
}

#[test]
fn a_paused_sync_plan_and_status_say_provisioning_is_paused() {
    let (server, mut ws) = fresh("snap-paused");
    let mut r = Redactor::new(&ws);
    let mut dir = small_directory();
    sync_and_learn(&server, &ws, &dir, &mut r);
    dir.user_mut("u2").title = "Rear Admiral".into();
    ws.write_directory(&dir);
    ws.raw_config = Some(ws.config_text() + "paused: true\n");
    let sync = ws.run(&["sync"]);
    sync.assert_code(6);
    let plan = ws.run(&["plan"]);
    plan.assert_code(0);
    let status = ws.run(&["status"]);
    status.assert_code(0);
    snap(
        "paused",
        "with `paused: true` after u2's title changed: sync (skipped, exit 6), plan, status",
        &r.apply(&format!(
            "{}\n{}\n{}",
            transcript(&sync),
            transcript(&plan),
            transcript(&status)
        )),
    );
}

#[test]
fn a_sync_held_by_the_quarantine_says_until_when_and_why() {
    let (server, ws) = fresh("snap-held");
    let mut r = Redactor::new(&ws);
    let dir = small_directory();
    sync_and_learn(&server, &ws, &dir, &mut r);
    std::fs::remove_file(ws.path().join("users.csv")).expect("remove users.csv");
    ws.run(&["sync"]).assert_code(5);
    ws.run(&["sync"]).assert_code(5);
    ws.write_directory(&dir);
    let held = ws.run(&["sync"]);
    held.assert_code(7);
    let plan = ws.run(&["plan"]);
    plan.assert_code(0);
    let status = ws.run(&["status"]);
    status.assert_code(0);
    snap(
        "quarantine_held",
        "after two syncs that could not read users.csv: sync (held, exit 7), plan, status",
        &r.apply(&format!(
            "{}\n{}\n{}",
            transcript(&held),
            transcript(&plan),
            transcript(&status)
        )),
    );
}
