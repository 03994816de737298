//! The provisioning log (`idsync log`): one line per operation of the runs the
//! state DB keeps (`history_days`), as text, JSON or CSV.
//!
//! Text shows directory values through [`show`] and messages through
//! [`escape`], like every other text output; JSON carries the same characters
//! as `\u` escapes ([`json_text`]). CSV is RFC 4180 with every field quoted
//! and escaped like text (the `detail` column is JSON), so a line of the file
//! is a record and nothing in it reaches a terminal raw; and a field that a
//! spreadsheet would read as a formula (one that starts with `=`, `+`, `-`,
//! `@`) gets a leading `'`, so opening the export never runs a value a
//! directory or a target sent.

use std::fmt::Write;

use crate::state::{LogRecord, OpOutcome};

use super::{escape, json_text, show};

/// One line per operation, oldest first; a failure's error on the next line.
pub fn log_text(records: &[LogRecord]) -> String {
    if records.is_empty() {
        return "No operations in the log for this selection.\n".to_string();
    }
    let mut out = String::new();
    for r in records {
        let http = r
            .http_status
            .map_or_else(|| "-".to_string(), |s| s.to_string());
        let _ = write!(
            out,
            "{}  run {}  {:<14} {:<8} {:>3}  {}",
            r.at,
            r.run_id,
            r.op,
            r.outcome,
            http,
            show(&r.subject)
        );
        if let Some(name) = r.name.as_ref().filter(|n| **n != r.subject) {
            let _ = write!(out, " ({})", show(name));
        }
        out.push('\n');
        if let Some(detail) = &r.detail {
            detail_text(&mut out, detail);
        }
        if let Some(error) = &r.error {
            // A skipped operation was not sent: why is no error.
            let label = if r.outcome == OpOutcome::Skipped {
                "skipped"
            } else {
                "error"
            };
            let _ = writeln!(out, "    {label}: {}", escape(error));
        }
    }
    out
}

/// An operation's detail, indented under it: one line per changed attribute
/// (`title: "Manager" → "Rear Admiral"`), the members, what a delete destroyed
/// (`had title: Engineer`, `had groups: eng, ops`), anything else as JSON.
fn detail_text(out: &mut String, detail: &serde_json::Value) {
    let Some(fields) = detail.as_object() else {
        let _ = writeln!(out, "    {}", escape(&detail.to_string()));
        return;
    };
    for (field, value) in fields {
        match (field.as_str(), value) {
            ("changes", serde_json::Value::Object(changes)) => {
                for (attr, change) in changes {
                    let _ = writeln!(
                        out,
                        "    {}: {} → {}",
                        show(attr),
                        value_text(&change["old"]),
                        value_text(&change["new"])
                    );
                }
            }
            ("members", serde_json::Value::Array(members)) => {
                let _ = writeln!(out, "    members: {}", list_text(members));
            }
            ("deleted", serde_json::Value::Object(had)) => {
                for (what, value) in had {
                    match value {
                        serde_json::Value::Object(attrs) => {
                            for (attr, v) in attrs {
                                let _ = writeln!(out, "    had {}: {}", show(attr), value_text(v));
                            }
                        }
                        serde_json::Value::Array(items) => {
                            let _ = writeln!(out, "    had {}: {}", show(what), list_text(items));
                        }
                        other => {
                            let _ = writeln!(out, "    had {}: {}", show(what), value_text(other));
                        }
                    }
                }
            }
            _ => {
                let _ = writeln!(out, "    {}: {}", show(field), escape(&value.to_string()));
            }
        }
    }
}

/// A JSON list as text, comma-separated (`(none)` when empty).
fn list_text(items: &[serde_json::Value]) -> String {
    if items.is_empty() {
        return "(none)".to_string();
    }
    items.iter().map(value_text).collect::<Vec<_>>().join(", ")
}

/// A JSON value as text: a string shown bare or quoted, null as `(none)`.
fn value_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "(none)".to_string(),
        serde_json::Value::String(s) => show(s),
        other => escape(&other.to_string()),
    }
}

/// The records as a JSON array.
pub fn log_json(records: &[LogRecord]) -> String {
    json_text(serde_json::to_string_pretty(records).expect("log records serialize"))
}

/// The records as CSV with a header row, every field quoted and neutralised.
pub fn log_csv(records: &[LogRecord]) -> String {
    let mut writer = csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Always)
        .from_writer(Vec::new());
    let header = [
        "run_id",
        "seq",
        "at",
        "command",
        "action",
        "object_key",
        "object_name",
        "outcome",
        "http_status",
        "error",
        "detail",
    ];
    let _ = writer.write_record(header);
    for r in records {
        let fields = [
            r.run_id.to_string(),
            r.seq.to_string(),
            r.at.clone(),
            r.command.clone(),
            r.op.to_string(),
            r.subject.clone(),
            r.name.clone().unwrap_or_default(),
            r.outcome.to_string(),
            r.http_status.map(|s| s.to_string()).unwrap_or_default(),
            r.error.clone().unwrap_or_default(),
        ];
        let detail = r
            .detail
            .as_ref()
            .map(|d| json_text(d.to_string()))
            .unwrap_or_default();
        let _ = writer.write_record(
            fields
                .iter()
                .map(|f| spreadsheet_safe(&escape(f)))
                .chain([spreadsheet_safe(&detail)]),
        );
    }
    let bytes = writer.into_inner().unwrap_or_default();
    String::from_utf8(bytes).expect("CSV of UTF-8 fields is UTF-8")
}

/// A field a spreadsheet would take for a formula, prefixed with `'`.
pub(super) fn spreadsheet_safe(field: &str) -> String {
    if field.starts_with(['=', '+', '-', '@']) {
        format!("'{field}")
    } else {
        field.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::OpKind;
    use crate::state::OpOutcome;

    fn record(subject: &str, error: Option<&str>) -> LogRecord {
        LogRecord {
            run_id: 7,
            seq: 0,
            at: "2026-01-02T03:04:05.000Z".into(),
            command: "sync".into(),
            op: OpKind::CreateUser,
            subject: subject.into(),
            name: Some("ada@example.com".into()),
            outcome: if error.is_some() {
                OpOutcome::Failed
            } else {
                OpOutcome::Applied
            },
            http_status: Some(if error.is_some() { 400 } else { 201 }),
            error: error.map(str::to_string),
            detail: Some(serde_json::json!({
                "changes": { "title": { "old": "Manager", "new": "Boss\nforged" } }
            })),
        }
    }

    #[test]
    fn csv_quotes_every_field_and_neutralises_formulas() {
        let mut r = record(
            "=HYPERLINK(\"x\")",
            Some("-1+1, \"bad\"\nline\u{1b}[2J\u{202e}"),
        );
        r.detail = Some(serde_json::json!({ "changes": { "title": { "new": "a\u{202e}b\nc" } } }));
        let csv = log_csv(&[r]);
        let mut lines = csv.lines();
        assert!(lines.next().unwrap().starts_with("\"run_id\",\"seq\""));
        assert!(csv.contains("\"'=HYPERLINK(\"\"x\"\")\""), "{csv}");
        // One line per record: what came from outside is escaped.
        assert_eq!(csv.lines().count(), 2, "{csv}");
        assert!(!csv.contains(['\u{1b}', '\u{202e}']), "{csv}");
        // It reads back as one record of eleven fields.
        let mut reader = csv::Reader::from_reader(csv.as_bytes());
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].len(), 11);
        assert_eq!(&rows[0][9], "'-1+1, \"bad\"\\nline\\u{1b}[2J\\u{202e}");
        // The detail stays JSON, the same value.
        let detail: serde_json::Value = serde_json::from_str(&rows[0][10]).unwrap();
        assert_eq!(detail["changes"]["title"]["new"], "a\u{202e}b\nc");
    }

    #[test]
    fn text_escapes_controls_so_a_value_cannot_forge_a_line() {
        let text = log_text(&[record(
            "k\n2026 run 1 forged",
            Some("boom\u{1b}[2J\nforged"),
        )]);
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(
            text.contains("    title: Manager → \"Boss\\nforged\"\n"),
            "{text}"
        );
        assert!(text.contains("\\n2026 run 1 forged"), "{text}");
        assert!(text.contains("error: boom\\u{1b}[2J\\nforged"), "{text}");
    }

    #[test]
    fn a_delete_shows_what_it_destroyed() {
        let mut r = record("k1", None);
        r.op = OpKind::DeleteUser;
        r.detail = Some(serde_json::json!({
            "reason": "left the source",
            "deleted": {
                "attrs": { "title": "Engineer", "displayName": "Ada\nforged" },
                "groups": ["eng", "ops"],
                "active": true
            }
        }));
        let text = log_text(&[r.clone()]);
        for line in [
            "    had title: Engineer\n",
            "    had displayName: \"Ada\\nforged\"\n",
            "    had groups: eng, ops\n",
            "    had active: true\n",
            "    reason: \"left the source\"\n",
        ] {
            assert!(text.contains(line), "{line:?} in {text}");
        }
        r.op = OpKind::DeleteGroup;
        r.detail = Some(serde_json::json!({ "deleted": { "members": [] } }));
        assert!(log_text(&[r]).contains("    had members: (none)\n"));
    }
}
