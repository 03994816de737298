//! The audit's renderings of one report with a finding of every kind, some of
//! their values hostile.

use std::collections::BTreeMap;

use super::*;
use crate::model::{GroupKey, ScimId, SourceKey};
use crate::plan::audit::{Counts, Drift, ForeignMember, Orphan, Protected, Stale, UnmanagedGroup};

/// What hostile values look like: a formula, HTML, a line break, a bidi override.
const EVIL: &str = "=HYPERLINK(\"x\") <script>alert(1)</script>\nforged\u{202e}";

fn report() -> AuditReport {
    let audit = Audit {
        counts: Counts {
            target_users: 5,
            target_groups: 3,
            managed_users: 3,
            managed_groups: 1,
            source_users: 2,
            source_groups: 1,
        },
        orphans: vec![Orphan {
            scim_id: ScimId::new("hand-1"),
            user_name: Some(EVIL.into()),
            external_id: None,
            created: Some("2024-05-01T10:00:00Z".into()),
            groups: vec!["engineering".into()],
            note: None,
        }],
        stale: vec![Stale {
            key: SourceKey::new("u4"),
            user_name: "edsger@example.com".into(),
            scim_id: ScimId::new("id-4"),
            source: "not in the source",
            reason: "its removal is held by a guard: the plan removes 3 objects".into(),
        }],
        foreign_members: vec![ForeignMember {
            group: "engineering".into(),
            group_key: GroupKey::new("engineering"),
            user_name: Some("-zed@example.com".into()),
            key: None,
            scim_id: ScimId::new("hand-2"),
            reason: "added by hand in the target".into(),
        }],
        unmanaged_groups: vec![UnmanagedGroup {
            scim_id: ScimId::new("g-9"),
            display_name: "@Contractors".into(),
            members: 2,
            created: None,
        }],
        drift: Drift {
            users: 1,
            by_attribute: BTreeMap::from([("title".to_owned(), 1)]),
            missing_users: 1,
            ..Drift::default()
        },
        protected: vec![Protected {
            kind: "user",
            name: "admin@example.com".into(),
            finding: "active, not managed by idsync and not in the source".into(),
        }],
    };
    report_of(audit)
}

fn report_of(audit: Audit) -> AuditReport {
    AuditReport {
        generated_at: "2026-01-02T03:04:05Z".into(),
        target: "http://127.0.0.1:8090/v2".into(),
        clean: audit.is_clean(),
        findings: audit.findings(),
        audit,
    }
}

#[test]
fn golden_audit_text() {
    insta::assert_snapshot!(audit_text(&report()));
}

#[test]
fn a_clean_audit_says_nothing_was_found() {
    let r = report_of(Audit {
        counts: report().audit.counts,
        ..Audit::default()
    });
    let text = audit_text(&r);
    assert!(text.contains("\nNothing found:"), "{text}");
    assert_eq!(text.lines().count(), 3, "{text}");
    let html = audit_html(&r);
    assert!(html.contains(r#"<p id="verdict" class="ok">"#), "{html}");
}

#[test]
fn text_escapes_what_could_forge_a_line() {
    let text = audit_text(&report());
    assert!(!text.contains(['\u{202e}']), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("forged")), "{text}");
    assert!(text.contains("\\nforged\\u{202e}"), "{text}");
}

#[test]
fn csv_has_a_row_per_finding_escaped_and_neutralised() {
    let csv = audit_csv(&report());
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let kinds: Vec<&str> = rows.iter().map(|r| &r[0]).collect();
    assert_eq!(
        kinds,
        [
            "orphan",
            "stale_access",
            "member_not_from_source",
            "unmanaged_group",
            "drift",
            "drift",
            "protected_user"
        ]
    );
    // A formula, a leading `-` or `@` is neutralised; a line break escaped.
    assert!(rows[0][1].starts_with("'=HYPERLINK"), "{csv}");
    assert!(rows[0][1].contains("\\nforged\\u{202e}"), "{csv}");
    assert_eq!(&rows[2][1], "'-zed@example.com");
    assert_eq!(&rows[3][1], "'@Contractors");
    assert_eq!((&rows[4][1], &rows[4][6]), ("title", "1"));
    assert_eq!((&rows[5][1], &rows[5][6]), ("missing_users", "1"));
    assert_eq!(csv.lines().count(), 8, "one line per record: {csv}");
}

#[test]
fn json_is_the_report_with_the_findings_at_the_top_level() {
    let json: serde_json::Value = serde_json::from_str(&audit_json(&report())).unwrap();
    assert_eq!(json["orphans"][0]["user_name"], EVIL);
    assert_eq!(json["stale"][0]["key"], "u4");
    assert_eq!(json["drift"]["by_attribute"]["title"], 1);
    assert_eq!(json["counts"]["target_users"], 5);
    assert_eq!(
        (&json["clean"], &json["findings"]),
        (&false.into(), &6.into())
    );
    assert!(!audit_json(&report()).contains('\u{202e}'));
}

#[test]
fn html_escapes_every_value_and_loads_nothing() {
    let html = audit_html(&report());
    assert!(html.contains(r#"content="default-src 'none';"#), "{html}");
    assert!(!html.contains("<script>"), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
        "{html}"
    );
    assert!(!html.contains('\u{202e}'), "{html}");
    assert_eq!(html.matches("<tr class=\"orphan\">").count(), 1);
    assert_eq!(html.matches("<tr class=\"stale\">").count(), 1);
    assert_eq!(html.matches("<tr class=\"foreign-member\">").count(), 1);
    assert_eq!(html.matches("<tr class=\"unmanaged-group\">").count(), 1);
    assert!(
        html.contains("<li class=\"drift-attribute\">title: 1</li>"),
        "{html}"
    );
    assert!(
        html.contains(r#"<p id="verdict" class="failed">6 finding(s).</p>"#),
        "{html}"
    );
}
