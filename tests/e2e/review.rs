//! `plan --format markdown` and `revert --format markdown` through the built
//! binary: the page a reviewer approves names every change by userName and
//! key, carries the fingerprint of the plan saved beside it, and that saved
//! plan is what `sync --plan` applies. Pinned by an insta snapshot with the
//! fingerprint and run times redacted.

use regex::Regex;

use crate::harness::{Directory, ScimServer, UserRow, Workspace, fresh_token, str_at};

fn directory() -> Directory {
    let users = vec![
        UserRow::new("u1", "ada@example.com", "Ada", "Lovelace"),
        UserRow::new("u2", "grace@example.com", "Grace", "Hopper"),
        UserRow::new("u3", "alan@example.com", "Alan", "Turing"),
    ];
    let groups = [
        (
            "engineering".to_owned(),
            vec!["u1".to_owned(), "u2".to_owned(), "u3".to_owned()],
        ),
        ("finance".to_owned(), vec!["u3".to_owned()]),
    ]
    .into_iter()
    .collect();
    Directory { users, groups }
}

/// The page with what varies between runs replaced.
fn redacted(page: &str) -> String {
    let fingerprint = Regex::new(r"`[0-9a-f]+-\d+(-full)?-[0-9a-f]{32}`").expect("regex");
    let time = Regex::new(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z").expect("regex");
    let page = fingerprint.replace_all(page, "`[fingerprint]`");
    time.replace_all(&page, "[time]").into_owned()
}

/// Every table row has as many cells as its header.
fn assert_tables_whole(page: &str) {
    let cells = |line: &str| line.replace("\\|", "").matches('|').count();
    let mut header = None;
    for line in page.lines() {
        match (line.starts_with('|'), header) {
            (true, None) => header = Some(cells(line)),
            (true, Some(n)) => assert_eq!(cells(line), n, "{line}\n{page}"),
            (false, _) => header = None,
        }
    }
}

#[test]
fn a_markdown_plan_names_members_by_user_name_and_carries_the_fingerprint_sync_plan_applies() {
    let server = ScimServer::start(&fresh_token("review-md"));
    let ws = Workspace::new(&server);
    let mut dir = directory();
    ws.write_directory(&dir);
    ws.sync_ok();

    // Grace gets a title no table should choke on; Alan leaves; Barbara joins.
    dir.user_mut("u2").title = "Lead | <script>alert(1)</script> `x` *y*".into();
    dir.remove_user("u3");
    dir.users.push(UserRow::new(
        "u4",
        "barbara@example.com",
        "Barbara",
        "Liskov",
    ));
    dir.groups
        .get_mut("engineering")
        .expect("engineering")
        .push("u4".into());
    ws.write_directory(&dir);

    let saved = ws.path().join("plan.json");
    let saved_arg = saved.display().to_string();
    let out = ws.run(&["plan", "--format", "markdown", "--out", &saved_arg]);
    out.assert_code(0);
    let page = &out.stdout;
    assert_tables_whole(page);
    assert!(!page.contains("<script"), "{page}");
    for row in [
        "| engineering | barbara@example.com | u4 |",
        "| engineering | alan@example.com | u3 |",
        "| finance | alan@example.com | u3 |",
    ] {
        assert!(page.contains(row), "{row} in\n{page}");
    }
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&saved).expect("plan saved")).expect("JSON");
    let fingerprint = str_at(&plan, "fingerprint");
    assert!(
        page.contains(&format!("`{fingerprint}`")),
        "the page's fingerprint is not the saved plan's ({fingerprint}):\n{page}"
    );
    insta::assert_snapshot!("plan_markdown", redacted(page));

    // The reviewed plan is what `sync --plan` applies.
    ws.run(&["sync", "--plan", &saved_arg]).assert_code(0);
    ws.assert_plan_empty();

    // And the run can be reviewed for a revert the same way.
    let status = ws.run(&["status", "--format", "json"]);
    let runs = status.json()["runs"].as_array().expect("runs").clone();
    let last = runs
        .iter()
        .map(|r| r["id"].as_i64().expect("run id"))
        .max()
        .expect("a run");
    let revert = ws.run(&["revert", &last.to_string(), "--format", "markdown"]);
    revert.assert_code(0);
    assert_tables_whole(&revert.stdout);
    assert!(
        revert
            .stdout
            .contains(&format!("## idsync revert of run {last}")),
        "{}",
        revert.stdout
    );
    assert!(
        revert
            .stdout
            .contains("| engineering | barbara@example.com | u4 |"),
        "{}",
        revert.stdout
    );
}
