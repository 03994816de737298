//! Golden Markdown plans of small scenarios (insta snapshots in
//! `src/report/markdown/snapshots/`), and what hostile directory values can
//! and cannot do to the page.

use super::*;
use crate::model::{State, Status, UserAttr};
use crate::plan::testkit::{desired, golden_scenario, group, person, plan, state_of, with_group};
use crate::plan::{Policy, RemovalLimit, RemoveAction};

fn review() -> PlanReview {
    PlanReview {
        title: "idsync plan".into(),
        would_stop: Vec::new(),
        saved_only: false,
    }
}

/// Planned as `plan --format markdown` plans (members named from the source
/// and the state), with a fixed fingerprint.
fn planned(d: &crate::model::Desired, s: &State, policy: &Policy) -> Plan {
    let mut p = plan(d, s, policy);
    p.fingerprint = "cfg0123-7-0123456789abcdef".into();
    p
}

#[test]
fn golden_markdown_plan_of_creates_updates_memberships_and_a_leaver() {
    // The scenario of the golden text and JSON plans.
    let (d, state) = golden_scenario();
    let p = planned(&d, &state, &Policy::default());
    insta::assert_snapshot!(plan_markdown(&p, &review()));
}

#[test]
fn golden_markdown_plan_held_by_a_guard_with_deletes() {
    let people: Vec<_> = (1..=4)
        .map(|i| person(&format!("k{i}"), &format!("p{i}@example.com"), "Eng"))
        .collect();
    let state = with_group(
        state_of(
            &people
                .iter()
                .map(|p| (p, Status::Active))
                .collect::<Vec<_>>(),
        ),
        "ops",
        "Ops",
        &["k1", "k2", "k3", "k4"],
    );
    let d = desired(vec![people[0].clone()], vec![group("ops", "Ops", &["k1"])]);
    let policy = Policy {
        remove_action: RemoveAction::Delete,
        max_removals: RemovalLimit::Count(1),
        ..Policy::default()
    };
    let p = planned(&d, &state, &policy);
    let stop = crate::plan::guard::check(&p, &policy, false).expect_err("held");
    let review = PlanReview {
        would_stop: vec![(stop.to_string(), Some(stop.hint().to_string()))],
        ..review()
    };
    insta::assert_snapshot!(plan_markdown(&p, &review));
}

#[test]
fn golden_markdown_plan_with_nothing_to_do_and_a_revert() {
    let ann = person("e1", "ann@example.com", "Engineer");
    let state = state_of(&[(&ann, Status::Active)]);
    let p = planned(&desired(vec![ann], Vec::new()), &state, &Policy::default());
    let revert = PlanReview {
        title: "idsync revert of run 3".into(),
        would_stop: Vec::new(),
        saved_only: true,
    };
    insta::assert_snapshot!(format!(
        "{}\n---\n\n{}",
        plan_markdown(&p, &review()),
        plan_markdown(&p, &revert)
    ));
}

#[test]
fn hostile_directory_values_neither_break_a_table_nor_inject_html() {
    let evil_title = "Eve | <img src=x onerror=alert(1)> **bold** `tick`\n| forged | row |";
    let eve = person("e|1", "eve@example.com", "Engineer");
    let state = state_of(&[(&eve, Status::Active)]);
    let mut eve_now = eve.clone();
    eve_now.attrs.insert(UserAttr::Title, evil_title);
    let admin = person("a1", "@admin|x", "Admin");
    let hostile = group(
        "g",
        "<script>alert(1)</script> @here #1 ~~x~~ $x$",
        &["a1", "e|1"],
    );
    let d = desired(vec![admin, eve_now], vec![hostile]);
    let p = planned(&d, &state, &Policy::default());
    let page = plan_markdown(&p, &review());
    // Every row of a table has as many cells as its header: no `|` from a
    // value survives unescaped, and no value starts a row of its own.
    let cells = |line: &str| line.replace("\\|", "").matches('|').count();
    let mut header = None;
    for line in page.lines() {
        match (line.starts_with('|'), header) {
            (true, None) => header = Some(cells(line)),
            (true, Some(n)) => assert_eq!(cells(line), n, "{line}\n{page}"),
            (false, _) => header = None,
        }
    }
    assert!(!page.contains("<img"), "{page}");
    assert!(!page.contains("<script"), "{page}");
    assert!(page.contains("&lt;script&gt;"), "{page}");
    assert!(!page.contains("**bold**"), "{page}");
    assert!(page.contains("\\*\\*bold\\*\\*"), "{page}");
    assert!(page.contains("\\`tick\\`"), "{page}");
    // A newline is shown escaped; no value starts a line of its own.
    assert!(page.contains("\\\\n"), "{page}");
    assert!(!page.lines().any(|l| l.starts_with("| forged")), "{page}");
    // No mention, issue reference, strikethrough or math.
    assert!(
        page.contains("\\@here") && page.contains("\\@admin"),
        "{page}"
    );
    assert!(
        page.contains("\\#1") && page.contains("\\~\\~x\\~\\~"),
        "{page}"
    );
    assert!(page.contains("\\$x\\$"), "{page}");
}

#[test]
fn markdown_escapes_what_markdown_and_html_read() {
    assert_eq!(md("ada@example.com"), "ada@example.com");
    assert_eq!(md("a|b"), "a\\|b");
    assert_eq!(md("<b>&"), "&lt;b&gt;&amp;");
    assert_eq!(md("@team"), "\\@team");
    assert_eq!(md("x @team"), "x \\@team");
    assert_eq!(md("line\nbreak\u{202e}"), "line\\\\nbreak\\\\u{202e}");
    assert_eq!(md("[link](x)"), "\\[link\\](x)");
}

#[test]
fn a_long_section_folds_into_details() {
    let people: Vec<_> = (0..60)
        .map(|i| person(&format!("k{i:02}"), &format!("p{i}@example.com"), "Eng"))
        .collect();
    let keys: Vec<String> = people.iter().map(|p| p.key.as_str().to_owned()).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let d = desired(people, vec![group("eng", "Engineering", &keys)]);
    let p = planned(&d, &State::default(), &Policy::default());
    let page = plan_markdown(&p, &review());
    assert!(
        page.contains("<details><summary>Users to create: 60 rows</summary>\n\n| userName | key |"),
        "{page}"
    );
    assert!(
        page.contains("<details><summary>Memberships to add: 60 rows</summary>"),
        "{page}"
    );
    assert_eq!(page.matches("</details>").count(), 2, "{page}");
    // Every member is listed by userName and key: nothing cut.
    assert!(
        page.contains("| Engineering | p59@example.com | k59 |"),
        "{page}"
    );
    // The summary (9 rows) stays open.
    assert!(
        page.contains("| change | count |\n|---|---|\n| users to create | 60 |"),
        "{page}"
    );
}
