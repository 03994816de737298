//! `plan --format markdown` and `revert --format markdown` through the built
//! binary: the page a reviewer approves names every change by userName and
//! key, carries the fingerprint of the plan saved beside it, and that saved
//! plan is what `sync --plan` applies. Pinned by an insta snapshot with the
//! fingerprint and run times redacted.

use regex::Regex;

use crate::audit::directory;
use crate::harness::{Idsync, ScimServer, UserRow, Workspace, fresh_token, str_at};

/// The page with what varies between runs replaced.
fn redacted(page: &str) -> String {
    let fingerprint = Regex::new(r"`[0-9a-f]+-\d+(-full)?-[0-9a-f]{32}`").expect("regex");
    let time = Regex::new(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z").expect("regex");
    let page = fingerprint.replace_all(page, "`[fingerprint]`");
    time.replace_all(&page, "[time]").into_owned()
}

#[test]
fn a_markdown_plan_names_members_by_user_name_and_carries_the_fingerprint_sync_plan_applies() {
    let server = ScimServer::start(&fresh_token("review-md"));
    let ws = Workspace::new(&server);
    let mut dir = directory();
    ws.write_directory(&dir);
    ws.sync_ok();

    // Grace gets a title no table should choke on; Alan leaves; Margaret joins.
    dir.user_mut("u2").title = "Lead | <script>alert(1)</script> `x` *y*".into();
    dir.remove_user("u3");
    dir.users.push(UserRow::new(
        "u6",
        "margaret@example.com",
        "Margaret",
        "Hamilton",
    ));
    dir.groups
        .get_mut("engineering")
        .expect("engineering")
        .push("u6".into());
    ws.write_directory(&dir);

    let saved = ws.path().join("plan.json");
    let saved_arg = saved.display().to_string();
    let out = ws.run(&["plan", "--format", "markdown", "--out", &saved_arg]);
    out.assert_code(0);
    let page = &out.stdout;
    // Members by userName and key; the title cannot break its row or the page.
    for row in [
        "| engineering | margaret@example.com | u6 |",
        "| engineering | alan@example.com | u3 |",
        r#"| grace@example.com | u2 | title | "Engineer" | "Lead \| &lt;script&gt;alert(1)&lt;/script&gt; \`x\` \*y\*" |"#,
    ] {
        assert!(page.lines().any(|l| l == row), "{row} in\n{page}");
    }
    assert!(!page.contains("<script"), "{page}");
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
            .contains("| engineering | margaret@example.com | u6 |"),
        "{}",
        revert.stdout
    );
}
